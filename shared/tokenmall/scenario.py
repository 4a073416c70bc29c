"""Scenario files (SCENARIOS.md): reading, running on the engine, the result document, checks.

Reading is strict and happens before any step runs: invalid YAML, an unknown
step or field, or a value that is not a number rejects the whole file
(:class:`ScenarioError`).  Running applies the steps one by one; a step the
rules refuse either was expected (``refused: true``: it changed nothing) or
stops the run with :class:`StepFailed` naming the step number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from tokenmall.engine import Engine, Plan, PlanError, Refused
from tokenmall.engine.plan import check_plan_numbers, merge_plan
from tokenmall.money import AmountError, to_cents, to_decimal, to_units
from tokenmall.views import result_document


class ScenarioError(ValueError):
    """The file cannot be read as a scenario; no step has run."""


class StepFailed(RuntimeError):
    def __init__(self, step: int, kind: str, message: str) -> None:
        super().__init__(f"step {step} ({kind}): {message}")
        self.step, self.kind, self.message = step, kind, message


# ------------------------------------------------------------------ YAML with exact decimals


class _DecimalLoader(yaml.SafeLoader):
    """Safe YAML whose floats become Decimals, so ``0.012`` stays exactly 0.012."""


def _decimal_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
    text = str(loader.construct_scalar(node)).replace("_", "")
    try:
        return to_decimal(text)
    except AmountError as exc:
        raise ScenarioError(f"line {node.start_mark.line + 1}: {exc}") from None


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _decimal_float)


def load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_DecimalLoader)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"invalid YAML: {exc}") from None


# ------------------------------------------------------------------ steps

# step kind -> (required fields, optional fields)
STEP_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "join": (frozenset({"member"}), frozenset({"sponsor", "merchant", "seq"})),
    "order": (frozenset({"member", "amount"}), frozenset({"id", "stable"})),
    "refund": (frozenset({"order"}), frozenset()),
    "settle": (frozenset(), frozenset()),
    "sell": (frozenset({"member"}), frozenset({"points", "all"})),
    "exchange": (frozenset({"member", "points"}), frozenset()),
    "merchant_exchange": (frozenset({"member", "stable"}), frozenset()),
    "adjust": (frozenset({"member", "asset", "amount", "reason"}), frozenset()),
    "plan": (frozenset(), frozenset()),  # a partial plan: checked against the plan schema
}
NUMERIC_FIELDS = {"amount", "stable", "points"}
STEP_MODIFIERS = ("repeat", "refused")
TOP_LEVEL = {"name", "description", "plan", "steps", "checks"}


@dataclass(frozen=True)
class Step:
    number: int  # 1-based, over the expanded steps
    kind: str
    fields: dict[str, Any]
    refused: bool = False


@dataclass(frozen=True)
class Check:
    path: str
    equals: Any = None
    approx: Decimal | None = None
    tol: Decimal | None = None
    has_equals: bool = False

    def describe(self) -> str:
        if self.has_equals:
            return f"{self.path} == {self.equals}"
        return f"{self.path} ≈ {self.approx} ± {self.tol}"


@dataclass
class Scenario:
    name: str
    plan: Plan
    steps: list[Step]
    checks: list[Check]


def _substitute(value: Any, i: int) -> Any:
    if isinstance(value, str):
        return value.replace("{i}", str(i))
    if isinstance(value, Mapping):
        return {k: _substitute(v, i) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, i) for v in value]
    return value


def _repeat_count(value: Any, where: str) -> int:
    """``repeat: N``, a whole number >= 1, written as a YAML number or a string."""
    count: Decimal | None = None
    if not isinstance(value, bool) and isinstance(value, (int, str, Decimal)):
        try:
            count = to_decimal(value, "repeat")
        except AmountError:
            count = None
    if count is None or count != count.to_integral_value() or count < 1:
        raise ScenarioError(f"{where}: repeat must be a whole number >= 1")
    return int(count)


def _parse_step(raw: Any, number: int) -> tuple[str, dict[str, Any], int, bool]:
    where = f"step {number}"
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: a step is a one-key mapping such as `order: {{...}}`")
    kinds = [k for k in raw if k not in STEP_MODIFIERS]
    if len(kinds) != 1:
        raise ScenarioError(
            f"{where}: expected exactly one step key, got {sorted(map(str, kinds))}"
        )
    kind = kinds[0]
    if kind not in STEP_FIELDS:
        raise ScenarioError(f"{where}: unknown step {kind!r} (known: {', '.join(STEP_FIELDS)})")
    body = raw[kind]
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise ScenarioError(f"{where}: the fields of {kind} must be a mapping")
    repeat = _repeat_count(raw.get("repeat", 1), where)
    refused = raw.get("refused", False)
    if not isinstance(refused, bool):
        raise ScenarioError(f"{where}: refused must be true or false")
    if kind == "plan":
        try:
            merge_plan({}, dict(body))  # keys; ranges are checked when the step is applied
            check_plan_numbers(dict(body))
        except PlanError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        return kind, dict(body), repeat, refused
    required, optional = STEP_FIELDS[kind]
    unknown = set(body) - required - optional
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {sorted(map(str, unknown))} for {kind}")
    missing = required - set(body)
    if missing:
        raise ScenarioError(f"{where}: {kind} needs {sorted(missing)}")
    return kind, dict(body), repeat, refused


def _check_numbers(kind: str, fields: dict[str, Any], where: str) -> None:
    for key in NUMERIC_FIELDS & set(fields):
        value = fields[key]
        if kind == "sell" and key == "points" and value == "all":
            continue
        try:
            to_decimal(value, key)
        except AmountError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
    for key in ("member", "sponsor", "order", "id", "asset", "reason"):
        if key in fields and not isinstance(fields[key], (str, int)):
            raise ScenarioError(f"{where}: {key} must be a string")
    if kind == "sell" and "all" in fields and not isinstance(fields["all"], bool):
        raise ScenarioError(f"{where}: all must be true or false")
    if kind == "sell" and fields.get("all") is not True and fields.get("points") is None:
        raise ScenarioError(f"{where}: sell needs points (a number or all) or all: true")
    if kind == "join" and not isinstance(fields.get("merchant", False), bool):
        raise ScenarioError(f"{where}: merchant must be true or false")
    seq = fields.get("seq")
    if kind == "join" and seq is not None and (type(seq) is not int or not 0 < seq < 2**62):
        raise ScenarioError(f"{where}: seq (registration order) must be a positive integer")


def _parse_check(raw: Any, index: int) -> Check:
    where = f"checks[{index}]"
    if not isinstance(raw, Mapping) or "path" not in raw:
        raise ScenarioError(f"{where}: a check needs a path")
    unknown = set(raw) - {"path", "equals", "approx", "tol"}
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {sorted(unknown)}")
    try:
        if "equals" in raw:
            expected = raw["equals"]
            if expected is not None:
                to_decimal(expected, "equals")
            return Check(str(raw["path"]), equals=expected, has_equals=True)
        if "approx" in raw:
            return Check(
                str(raw["path"]),
                approx=to_decimal(raw["approx"], "approx"),
                tol=to_decimal(raw.get("tol", 0), "tol"),
            )
    except AmountError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    raise ScenarioError(f"{where}: a check needs equals or approx")


def parse_scenario(doc: Any, default_name: str = "scenario") -> Scenario:
    if not isinstance(doc, Mapping):
        raise ScenarioError("a scenario is a mapping with plan, steps and checks")
    unknown = set(doc) - TOP_LEVEL
    if unknown:
        raise ScenarioError(f"unknown top-level key(s) {sorted(map(str, unknown))}")
    plan_raw = doc.get("plan") or {}
    if not isinstance(plan_raw, Mapping):
        raise ScenarioError("plan must be a mapping")
    try:
        plan = Plan.from_mapping(plan_raw)
    except PlanError as exc:
        raise ScenarioError(f"plan: {exc}") from None
    raw_steps = doc.get("steps") or []
    if not isinstance(raw_steps, list):
        raise ScenarioError("steps must be a list")
    steps: list[Step] = []
    for raw in raw_steps:
        kind, body, repeat, refused = _parse_step(raw, len(steps) + 1)
        for i in range(1, repeat + 1):
            fields = _substitute(body, i) if repeat > 1 or "{i}" in str(body) else body
            number = len(steps) + 1
            if kind != "plan":
                _check_numbers(kind, fields, f"step {number} ({kind})")
            steps.append(Step(number, kind, fields, refused))
    raw_checks = doc.get("checks") or []
    if not isinstance(raw_checks, list):
        raise ScenarioError("checks must be a list")
    checks = [_parse_check(c, i) for i, c in enumerate(raw_checks)]
    return Scenario(str(doc.get("name") or default_name), plan, steps, checks)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror}") from None
    return parse_scenario(load_yaml(text), default_name=path.stem)


# ------------------------------------------------------------------ running on the engine


def _name(value: Any) -> str:
    return str(value)


def _cents(value: Any, what: str) -> int:
    try:
        return to_cents(value, what)
    except AmountError as exc:
        raise Refused(str(exc)) from None


def _units(value: Any, what: str) -> int:
    try:
        return to_units(value, what)
    except AmountError as exc:
        raise Refused(str(exc)) from None


def apply_step(engine: Engine, step: Step) -> Any:
    """Apply one step to the engine; raises Refused (nothing changed) if the rules refuse it."""
    f = step.fields
    kind = step.kind
    if kind == "join":
        sponsor = f.get("sponsor")
        return engine.join(
            _name(f["member"]),
            None if sponsor is None else _name(sponsor),
            bool(f.get("merchant", False)),
            f.get("seq"),
        )
    if kind == "order":
        oid = f.get("id")
        return engine.order(
            _name(f["member"]),
            _cents(f["amount"], "amount"),
            None if oid is None else _name(oid),
            _cents(f.get("stable", 0), "stable"),
        )
    if kind == "refund":
        return engine.refund(_name(f["order"]))
    if kind == "settle":
        return engine.settle()
    if kind == "sell":
        points = f.get("points")
        if f.get("all") is True or points == "all":
            units = None
        elif points is None:
            raise Refused("sell needs points (a number or all) or all: true")
        else:
            units = _units(points, "points")
        return engine.sell(_name(f["member"]), units)
    if kind == "exchange":
        return engine.exchange(_name(f["member"]), _units(f["points"], "points"))
    if kind == "merchant_exchange":
        return engine.merchant_exchange(_name(f["member"]), _cents(f["stable"], "stable"))
    if kind == "adjust":
        asset = str(f["asset"])
        amount = (
            _units(f["amount"], "amount") if asset == "equity" else _cents(f["amount"], "amount")
        )
        return engine.adjust(_name(f["member"]), asset, amount, str(f["reason"]))
    if kind == "plan":
        return engine.propose_plan(f)
    raise AssertionError(kind)  # parse_scenario only lets known kinds through


@dataclass
class DayPoint:
    """One point of the scenario's timeline (after each settlement), for plots."""

    day: int
    price: Decimal | None
    pool: Decimal
    outstanding_quota: Decimal
    released: Decimal


@dataclass
class RunResult:
    scenario: Scenario
    engine: Engine
    document: dict[str, Any]
    failures: list[str] = field(default_factory=list)
    timeline: list[DayPoint] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def run_steps(
    engine: Engine, steps: list[Step], on_settle: Callable[[Engine, Any], None] | None = None
) -> None:
    for step in steps:
        try:
            outcome = apply_step(engine, step)
        except Refused as exc:
            if step.refused:
                continue
            raise StepFailed(step.number, step.kind, f"refused: {exc}") from None
        if step.refused:
            raise StepFailed(step.number, step.kind, "expected to be refused, but it was accepted")
        if step.kind == "settle" and on_settle is not None:
            on_settle(engine, outcome)


def simulate(scenario: Scenario) -> RunResult:
    engine = Engine(scenario.plan)
    timeline: list[DayPoint] = []

    def record(eng: Engine, report: Any) -> None:
        timeline.append(_day_point(eng, sum(report.released.values())))

    run_steps(engine, scenario.steps, record)
    document = result_document(engine)
    return RunResult(
        scenario, engine, document, evaluate_checks(scenario.checks, document), timeline
    )


def _day_point(engine: Engine, released_cents: int) -> DayPoint:
    price = engine.price() if engine.plan.equity is not None else None
    return DayPoint(
        day=engine.day - 1,
        price=None if price is None else Decimal(price.numerator) / Decimal(price.denominator),
        pool=Decimal(engine.pool).scaleb(-2),
        outstanding_quota=Decimal(sum(engine.quota)).scaleb(-2),
        released=Decimal(released_cents).scaleb(-2),
    )


# ------------------------------------------------------------------ result document


# ------------------------------------------------------------------ checks

_MISSING = object()


def lookup(document: Mapping[str, Any], path: str) -> Any:
    """Follow a dotted path; member names may themselves contain dots (longest key wins)."""
    parts = path.split(".")
    node: Any = document
    i = 0
    while i < len(parts):
        if not isinstance(node, Mapping):
            return _MISSING
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if key in node:
                node, i = node[key], j
                break
        else:
            # a release kind never released reads as 0 (SCENARIOS.md)
            if i == len(parts) - 1 and i >= 1 and parts[i - 1] == "released":
                return "0"
            return _MISSING
    return node


def evaluate_checks(checks: list[Check], document: Mapping[str, Any]) -> list[str]:
    failures = []
    for check in checks:
        actual = lookup(document, check.path)
        if actual is _MISSING:
            failures.append(f"{check.describe()}: no such path in the result")
            continue
        if check.has_equals:
            if check.equals is None or actual is None:
                ok = check.equals is None and actual is None
            else:
                ok = _number(actual) == to_decimal(check.equals)
        else:
            assert check.approx is not None and check.tol is not None
            ok = actual is not None and abs(_number(actual) - check.approx) <= check.tol
        if not ok:
            failures.append(f"{check.describe()}: got {actual}")
    return failures


def _number(value: Any) -> Decimal:
    try:
        return to_decimal(value)
    except AmountError:
        return Decimal("NaN")


def iter_members(document: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield from document.get("members", {}).items()
