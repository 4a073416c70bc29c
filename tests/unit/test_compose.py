"""docker-compose.yml, Prometheus and Grafana files agree with the code (no Docker
engine here to run them): every service module exists, every TOKENMALL_* variable is
a setting of that service, ports match, and dashboards only use metrics we export."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenmall.replay import DEFAULT_PORTS, SERVICES
from tokenmall.servicekit import ServiceMetrics

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def settings_class(service: str) -> Any:
    app = importlib.import_module(f"tokenmall_{service}.app")
    build = app.build_app
    hint = build.__annotations__.get("settings", "")
    candidates = [v for k, v in vars(app).items() if k.endswith("Settings") and isinstance(v, type)]
    for cls in candidates:
        if cls.__name__ in str(hint):
            return cls
    from tokenmall.servicekit import ServiceSettings

    return ServiceSettings


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_its_module_with_known_settings(service: str) -> None:
    spec = COMPOSE["services"][service]
    module = spec["command"][-1]
    assert module == f"tokenmall_{service}"
    importlib.import_module(f"{module}.__main__".replace(".__main__", ".app"))
    fields = set(settings_class(service).model_fields)
    for variable in spec["environment"]:
        assert variable.startswith("TOKENMALL_"), variable
        assert variable.removeprefix("TOKENMALL_").lower() in fields, f"{service}: {variable}"
    port = int(spec["environment"]["TOKENMALL_PORT"])
    assert port == DEFAULT_PORTS[service]
    assert f"{port}:{port}" in spec["ports"]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_its_own_database(service: str) -> None:
    url = COMPOSE["services"][service]["environment"]["TOKENMALL_DATABASE_URL"]
    host = re.search(r"@([^:/]+)", url)
    assert host and host.group(1) == f"postgres-{service}"
    assert host.group(1) in COMPOSE["services"]


def test_kafka_is_the_official_image_in_kraft_mode() -> None:
    kafka = COMPOSE["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for service in SERVICES:
        assert (
            COMPOSE["services"][service]["environment"]["TOKENMALL_KAFKA_BOOTSTRAP"] == "kafka:9092"
        )


def test_orders_reaches_the_wallet_where_compose_runs_it() -> None:
    url = COMPOSE["services"]["orders"]["environment"]["TOKENMALL_WALLET_URL"]
    assert url == f"http://wallet:{DEFAULT_PORTS['wallet']}"


def test_prometheus_scrapes_every_service() -> None:
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets == {f"{s}:{DEFAULT_PORTS[s]}" for s in SERVICES}


def test_dashboard_queries_only_exported_metrics() -> None:
    metrics = ServiceMetrics("x")
    exported = {m.name for m in metrics.registry.collect()}
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/tokenmall.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"tokenmall_[a-z_]+", target["expr"]))
    base = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert base <= exported | {n.removesuffix("_total") for n in exported}, base - exported
    assert len(dashboard["panels"]) >= 5


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_starts_after_its_database_is_migrated(service: str) -> None:
    migrate = COMPOSE["services"][f"{service}-migrate"]
    assert migrate["command"] == ["tokenmall", "migrate", service]
    spec = COMPOSE["services"][service]
    assert spec["depends_on"][f"{service}-migrate"] == {
        "condition": "service_completed_successfully"
    }
    url = spec["environment"]["TOKENMALL_DATABASE_URL"]
    assert migrate["environment"]["TOKENMALL_DATABASE_URL"] == url
    assert migrate["depends_on"][f"postgres-{service}"] == {"condition": "service_healthy"}
    assert "TOKENMALL_MIGRATE_ON_START" not in spec["environment"]  # the default: refuse
