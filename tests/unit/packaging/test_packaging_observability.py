"""Dashboards, alert rules and docs only name metrics the operator exports, and cover all of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics_core import Metric

import dynamiclora.metrics  # noqa: F401  (registers the operator's metrics in the shared registry)
from dynamiclora import dashboards
from dynamiclora.serving.metrics import REGISTRY

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "dynamiclora"
METRIC = re.compile(r"\bdynamiclora_[a-zA-Z0-9_]+\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def families() -> list[Metric]:
    return list(REGISTRY.collect())


def exported_series() -> dict[str, str]:
    """Every series name the registry can expose -> its family name."""
    out = {}
    for fam in families():
        for suffix in SUFFIXES[fam.type]:
            out[fam.name + suffix] = fam.name
    return out


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text(encoding="utf-8"))
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard_models() -> dict[str, dict[str, object]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted((CHART / "dashboards").glob("*.json"))}


def test_registry_is_populated() -> None:
    names = {f.name for f in families()}
    # One metric of each module, so an empty registry (import order bug) cannot pass the checks below.
    assert {"dynamiclora_tier_energy", "dynamiclora_hotswap_swap_seconds", "dynamiclora_reconcile"} <= names


def test_dashboard_files_are_generated_from_the_builder() -> None:
    want = {f"{build().uid}.json": dashboards.dump(build()) for build in dashboards.DASHBOARDS}
    got = {p.name: p.read_text(encoding="utf-8") for p in (CHART / "dashboards").glob("*.json")}
    assert got == want, "charts/dynamiclora/dashboards/ is stale: run `make dashboards`"


def test_dashboards_reference_only_exported_metrics() -> None:
    exported = exported_series()
    for name, model in dashboard_models().items():
        for expr in dashboards.expressions(model):
            unknown = set(METRIC.findall(expr)) - set(exported)
            assert not unknown, f"{name}: {expr!r} names metrics the operator does not export: {sorted(unknown)}"


def test_rules_reference_only_exported_metrics() -> None:
    exported = exported_series()
    for expr in rule_expressions():
        unknown = set(METRIC.findall(expr)) - set(exported)
        assert not unknown, f"prometheus-rules.yaml: {expr!r} names unexported metrics {sorted(unknown)}"


def test_every_metric_is_shown_and_documented() -> None:
    exported = exported_series()
    used = {exported[m] for expr in rule_expressions() for m in METRIC.findall(expr)}
    for model in dashboard_models().values():
        used |= {exported[m] for expr in dashboards.expressions(model) for m in METRIC.findall(expr)}
    names = {f.name for f in families()}
    assert names - used == set(), f"metrics on no dashboard or alert: {sorted(names - used)}"
    doc = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    for fam in families():
        shown = fam.name + ("_total" if fam.type == "counter" else "")
        assert f"`{shown}`" in doc, f"docs/observability.md does not describe {shown}"


def test_dashboards_cover_what_the_issue_asks_for() -> None:
    titles = {p["title"] for m in dashboard_models().values() for p in m["panels"]}  # type: ignore[attr-defined]
    for title in ("Tier version", "Tier energy", "Screened fraction", "Migrations over time",
                  "Training and consolidation duration", "Hot-swap latency", "Loaded adapters per pod",
                  "Reconcile errors"):
        assert title in titles


def test_dashboard_layout_is_valid() -> None:
    for name, model in dashboard_models().items():
        ids = [p["id"] for p in model["panels"]]  # type: ignore[attr-defined]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in model["panels"]:  # type: ignore[attr-defined]
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, f"{name}: panel {panel['title']} overflows the grid"
            for target in panel.get("targets", []):
                assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_panel_rejects_bad_width() -> None:
    with pytest.raises(ValueError, match="width"):
        dashboards.Panel("x", "y", (dashboards.Query("up"),), width=25)


def test_grafana_sidecar_label_is_the_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert values["dashboards"]["labels"] == {"grafana_dashboard": "1"}
