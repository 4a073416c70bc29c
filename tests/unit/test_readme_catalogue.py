"""The README stays true: its event catalogue, configuration and metrics tables name
every topic, event, setting and metric the code has, and `tokenmall events` prints them."""

from __future__ import annotations

import json
import typing
from pathlib import Path

from typer.testing import CliRunner

from tokenmall import contracts
from tokenmall.cli import app
from tokenmall.servicekit import ServiceMetrics, ServiceSettings
from tokenmall_dividends.app import DividendsSettings
from tokenmall_dividends.app import build_app as build_dividends
from tokenmall_orders.app import OrdersSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_event_of_the_wire_union_is_in_the_catalogue() -> None:
    union = typing.get_args(typing.get_args(contracts.AnyEvent)[0])
    assert set(union) == set(contracts.EVENT_TYPES)


def test_readme_names_every_topic_event_setting_and_metric() -> None:
    missing = [t for t in contracts.TOPICS if f"`{t}`" not in README]
    missing += [e.__name__ for e in contracts.EVENT_TYPES if f"`{e.__name__}" not in README]
    for settings in (ServiceSettings, OrdersSettings, DividendsSettings):
        missing += [
            f"TOKENMALL_{f.upper()}"
            for f in settings.model_fields
            if f"TOKENMALL_{f.upper()}" not in README
        ]
    metrics = ServiceMetrics("x")
    names = {m.name for m in metrics.registry.collect()}
    # and what a service adds to its registry (dividends: day boundaries)
    dividends = build_dividends(DividendsSettings()).state.svc.metrics.registry
    names |= {m.name for m in dividends.collect()}
    missing += [n for n in names if n.removesuffix("_total") not in README]
    assert missing == []


def test_tokenmall_events_prints_topics_and_schemas() -> None:
    result = CliRunner().invoke(app, ["events", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [t["topic"] for t in data["topics"]] == list(contracts.TOPICS)
    assert data["events"]["OrderPaid"]["properties"]["amount"]["type"] == "string"
    human = CliRunner().invoke(app, ["events"])
    assert "OrderPaid: order_id, member, amount, stable" in human.output
