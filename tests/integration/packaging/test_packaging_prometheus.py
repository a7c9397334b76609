"""A real Prometheus scrapes the operator's metrics registry; promtool checks and tests the rules.

Needs Debian's ``prometheus`` package (``hack/install.sh`` installs it). The metrics endpoint is
prometheus_client's HTTP server over ``dynamiclora.serving.metrics.REGISTRY`` (with the operator's
``dynamiclora.metrics`` imported), run in a subprocess on loopback with one child per labelled metric.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging_promhelpers import RULES, Prom, free_port, get_json, prometheus, tool

import dynamiclora.metrics  # noqa: F401  (registers the operator's metrics)
from dynamiclora import dashboards
from dynamiclora.serving.metrics import REGISTRY

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
RULE_TESTS = ROOT / "tests" / "unit" / "packaging" / "prometheus-rules.test.yaml"

# Sets one child of every labelled metric (a labelled family with no child exposes no series), then
# serves the registry until killed.
EXPORTER = textwrap.dedent("""
    import sys, time
    from prometheus_client import start_http_server
    import dynamiclora.metrics as m
    from dynamiclora.serving import metrics as s
    from dynamiclora.serving.metrics import REGISTRY
    tier = dict(namespace="team", tier="alice-context", level="context")
    for g, v in ((m.TIER_VERSION, 7), (m.TIER_SERVED_VERSION, 6), (m.TIER_ENERGY, 0.5),
                 (m.TIER_SCREENED, 0.25), (m.TIER_TIME_SCALE, 600), (m.TIER_PENDING_RECORDS, 12),
                 (m.TIER_LAST_TRAINED, time.time())):
        g.labels(**tier).set(v)
    m.SWARM_DESIRED_PODS.labels(namespace="team", swarm="support").set(2)
    m.SWARM_READY_PODS.labels(namespace="team", swarm="support").set(2)
    m.AGENT_SERVED_PODS.labels(namespace="team", swarm="support", agent="alice").set(1)
    m.AGENT_PLACED_PODS.labels(namespace="team", swarm="support", agent="alice").set(2)
    m.POD_LOADED_ADAPTERS.labels(namespace="team", swarm="support", pod="support-inference-0").set(3)
    m.RECONCILES.labels(kind="Swarm", result="ok").inc(5)
    m.RECONCILES.labels(kind="Swarm", result="error").inc()
    m.RECONCILE_SECONDS.labels(kind="Swarm").observe(0.2)
    m.JOBS.labels(kind="training", result="succeeded").inc()
    m.JOB_SECONDS.labels(kind="training").observe(42)
    m.MIGRATIONS.labels(outcome="Migrated").inc(2)
    m.STORE_FEED_VERSIONS.labels(namespace="team").inc()
    m.MIGRATED_COMPONENTS.inc(3)
    m.GATE_DECISIONS.labels(namespace="team", tier="alice-context", result="rejected").inc()
    s.SWAP_SECONDS.labels(action="load").observe(0.3)
    s.LOADS.labels(kind="new").inc()
    s.UNLOADS.inc()
    s.FAILURES.labels(reason="timeout").inc()
    start_http_server(int(sys.argv[1]), addr="127.0.0.1", registry=REGISTRY)
    print("serving", flush=True)
    while True:
        time.sleep(3600)
""")

@pytest.fixture(scope="module")
def exporter() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", EXPORTER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "serving"
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def prom(exporter: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    with prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{exporter}") as api:
        yield api


def _expected_series() -> list[str]:
    out = []
    for fam in REGISTRY.collect():
        suffix = {"counter": "_total", "histogram": "_bucket", "gauge": ""}[fam.type]
        out.append(fam.name + suffix)
    return out


def test_every_operator_series_is_scraped(prom: Prom) -> None:
    series = _expected_series()
    assert len(series) >= 18
    missing = [s for s in series if not prom.query(s)["data"]["result"]]
    assert not missing, f"series not in Prometheus after a scrape: {missing}"
    tier = prom.query('dynamiclora_tier_version{namespace="team"}')["data"]["result"]
    assert tier[0]["metric"]["tier"] == "alice-context" and tier[0]["value"][1] == "7"


def _grafana_to_promql(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$swarm", ".*")
    m = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr)
    return m.group(1) if m else expr


def test_every_dashboard_query_evaluates(prom: Prom) -> None:
    time.sleep(3)  # rate() over 1m needs at least two scrapes
    empty = []
    for path in sorted((ROOT / "charts" / "dynamiclora" / "dashboards").glob("*.json")):
        model = json.loads(path.read_text(encoding="utf-8"))
        for expr in dashboards.expressions(model):
            answer = prom.query(_grafana_to_promql(expr))
            assert answer["status"] == "success", f"{path.name}: {expr!r}: {answer.get('error')}"
            if not answer["data"]["result"]:
                empty.append(expr)
    # Gauges and label_values queries have data after one scrape; rate()-based ones may still be empty.
    assert not [e for e in empty if "rate(" not in e and "increase(" not in e], empty


def test_alert_rules_load_and_evaluate(prom: Prom) -> None:
    deadline = time.monotonic() + 30
    while True:  # bounded: until every rule has been evaluated once
        groups = get_json(f"{prom.base}/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            break
        assert time.monotonic() < deadline, "rules were not evaluated within 30 s"
        time.sleep(0.5)
    want = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert {r["name"] for r in rules} == want
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    # served (1) < ready (2) for alice: the under-served alert is pending (it needs 10m to fire).
    alerts = {a["labels"]["alertname"]: a for a in get_json(f"{prom.base}/api/v1/alerts")["data"]["alerts"]}
    assert alerts["DynamicLoRAAdapterUnderServed"]["state"] == "pending"
    assert alerts["DynamicLoRAAdapterUnderServed"]["labels"]["agent"] == "alice"


def test_promtool_checks_and_tests_the_rules() -> None:
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    test = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                          capture_output=True, text=True, timeout=120)
    assert test.returncode == 0, test.stdout + test.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # Dashboards as recording rules: promtool's parser rejects any PromQL syntax error.
    promtool = tool("promtool")
    rules = []
    for path in sorted((ROOT / "charts" / "dynamiclora" / "dashboards").glob("*.json")):
        model = json.loads(path.read_text(encoding="utf-8"))
        for i, expr in enumerate(dashboards.expressions(model)):
            rules.append({"record": f"dashboard:{path.stem.replace('-', '_')}:{i}", "expr": _grafana_to_promql(expr)})
    (tmp_path / "dash.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dash", "rules": rules}]}))
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "dash.yaml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
