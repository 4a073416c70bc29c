"""The engine's input log as a scenario: what "the services equal ``simulate``" means.

Dividends applies every input (registration, order, refund, request, plan, settlement)
to the engine in the order it logs them — which, with events of different keys arriving
in any order, need not be the order in which they happened.  Turned into a scenario,
that log is exactly what ``tokenmall simulate`` must reproduce; refused inputs become
steps marked ``refused: true``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ENGINE_INPUT_KINDS = ("initial_plan", "plan", "join", "order", "refund", "request", "settle")


def _step(kind: str, p: Mapping[str, Any]) -> dict[str, Any]:
    if kind == "plan":
        return {"plan": dict(p["plan"])}
    if kind == "join":
        fields = {"member": p["member"], "merchant": bool(p.get("merchant"))}
        if p.get("sponsor") is not None:
            fields["sponsor"] = p["sponsor"]
        if p.get("seq") is not None:
            fields["seq"] = int(p["seq"])
        return {"join": fields}
    if kind == "order":
        fields = {"member": p["member"], "amount": str(p["amount"]), "id": p["order_id"]}
        if p.get("stable") not in (None, "0", 0):
            fields["stable"] = str(p["stable"])
        return {"order": fields}
    if kind == "refund":
        return {"refund": {"order": p["order_id"]}}
    if kind == "settle":
        return {"settle": {}}
    if kind == "request":
        request = p["kind"]
        if request == "sell":
            points = p.get("points")
            return {
                "sell": {
                    "member": p["member"],
                    **({"points": str(points)} if points else {"all": True}),
                }
            }
        if request == "exchange":
            return {"exchange": {"member": p["member"], "points": str(p["points"])}}
        if request == "merchant_exchange":
            return {"merchant_exchange": {"member": p["member"], "stable": str(p["stable"])}}
        if request == "adjust":
            return {
                "adjust": {
                    "member": p["member"],
                    "asset": p["asset"],
                    "amount": str(p["amount"]),
                    "reason": p.get("reason") or "",
                }
            }
    raise ValueError(f"not an engine input: {kind} {dict(p)}")


def scenario_from_inputs(
    rows: Iterable[Mapping[str, Any]], name: str = "input-log"
) -> dict[str, Any]:
    """Rows ``{kind, payload, accepted}`` in log order → a scenario document."""
    plan: dict[str, Any] = {}
    steps: list[dict[str, Any]] = []
    for row in rows:
        kind, payload = row["kind"], row["payload"]
        if kind == "initial_plan":
            if steps:
                raise ValueError("the first plan comes before every other input")
            plan = dict(payload["plan"])
            continue
        step = _step(kind, payload)
        if not row["accepted"]:
            step["refused"] = True
        steps.append(step)
    return {"name": name, "plan": plan, "steps": steps}
