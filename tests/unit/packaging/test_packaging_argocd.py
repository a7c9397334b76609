"""Argo CD health checks: the Lua in deploy/argocd/argocd-cm-health.yaml run by a real Lua 5.1.

Argo CD runs health scripts in gopher-lua (Lua 5.1) with the live object as the global ``obj`` and
expects a table ``{status=..., message=...}`` back; this test does the same with lupa's Lua 5.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51 as lupa  # Argo CD's gopher-lua implements Lua 5.1

ROOT = Path(__file__).resolve().parents[3]
CM = ROOT / "deploy" / "argocd" / "argocd-cm-health.yaml"
KINDS = ("Swarm", "LoRATier", "MigrationPolicy")
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _scripts() -> dict[str, str]:
    data = yaml.safe_load(CM.read_text(encoding="utf-8"))["data"]
    prefix = "resource.customizations.health.dynamiclora.io_"
    return {key[len(prefix):]: value for key, value in data.items() if key.startswith(prefix)}


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run the kind's script the way Argo CD does; returns (status, message)."""
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(_scripts()[kind])
    status, message = str(result["status"]), str(result["message"])
    assert status in ARGO_STATUSES
    return status, message


def cond(type_: str, status: str, message: str = "", generation: int | None = 3) -> dict[str, Any]:
    c: dict[str, Any] = {"type": type_, "status": status, "reason": "Test", "message": message}
    if generation is not None:
        c["observedGeneration"] = generation
    return c


def make(kind: str, status: dict[str, Any] | None, generation: int = 3, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "dynamiclora.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "team", "generation": generation},
        "spec": dict(spec),
    }
    if status is not None:
        obj["status"] = {"observedGeneration": generation, **status}
    return obj


def test_every_kind_has_a_check() -> None:
    assert set(_scripts()) == set(KINDS)


# (kind, status, expected Argo status, expected message fragment), one row per outcome per kind.
CASES = [
    ("Swarm", {"phase": "Ready", "conditions": [cond("Ready", "True", "2/2 pods serve v7")]},
     "Healthy", "2/2 pods serve v7"),
    ("Swarm", {"phase": "Progressing", "conditions": [cond("Ready", "False", "1/2 pods ready")]},
     "Progressing", "1/2 pods ready"),
    ("Swarm", {"phase": "Degraded", "conditions": [cond("Ready", "False", "hot-swap failed on pod-1")]},
     "Degraded", "hot-swap failed on pod-1"),
    ("Swarm", {"phase": "Ready", "conditions": [cond("Degraded", "True", "adapter rank too large")]},
     "Degraded", "adapter rank too large"),
    ("Swarm", {"phase": "Failed"}, "Degraded", "Failed"),
    ("LoRATier", {"phase": "Training", "conditions": [cond("Ready", "True", "v4 served")]}, "Healthy", "v4 served"),
    ("LoRATier", {"phase": "Ready"}, "Healthy", "Ready"),
    ("LoRATier", {"phase": "Pending"}, "Progressing", "Phase Pending"),
    ("LoRATier", {"phase": "Failed", "conditions": [cond("Ready", "False", "training Job failed")]},
     "Degraded", "training Job failed"),
    ("LoRATier", {"phase": "Suspended"}, "Suspended", "Suspended"),
    ("MigrationPolicy", {"phase": "Active", "conditions": [cond("Ready", "True", "evaluated")]},
     "Healthy", "evaluated"),
    ("MigrationPolicy", {"phase": "Pending"}, "Progressing", "Phase Pending"),
    ("MigrationPolicy", {"phase": "Failed", "conditions": [cond("Ready", "False", "tier ctx not found")]},
     "Degraded", "tier ctx not found"),
    ("MigrationPolicy", {"phase": "Suspended"}, "Suspended", "Suspended"),
]


@pytest.mark.parametrize(("kind", "status", "want", "fragment"), CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_phase_and_conditions_map_to_health(kind: str, status: dict[str, Any], want: str, fragment: str) -> None:
    got, message = health(kind, make(kind, status))
    assert got == want, message
    assert fragment in message


@pytest.mark.parametrize("kind", KINDS)
def test_no_status_yet_is_progressing(kind: str) -> None:
    assert health(kind, make(kind, None)) == ("Progressing", "Waiting for the operator to report status")


@pytest.mark.parametrize("kind", KINDS)
def test_stale_observed_generation_is_progressing(kind: str) -> None:
    obj = make(kind, {"phase": "Failed"}, generation=3)
    obj["metadata"]["generation"] = 4  # the user changed the spec; the operator has not caught up
    assert health(kind, obj) == ("Progressing", "Waiting for the operator to observe generation 4")


@pytest.mark.parametrize("kind", KINDS)
def test_stale_ready_condition_is_progressing(kind: str) -> None:
    healthy_phase = {"Swarm": "Ready", "LoRATier": "Ready", "MigrationPolicy": "Active"}[kind]
    status = {"phase": healthy_phase, "conditions": [cond("Ready", "True", "ok", generation=2)]}
    got, message = health(kind, make(kind, status, generation=3))
    assert (got, message) == ("Progressing", "Ready condition is from generation 2")


@pytest.mark.parametrize("kind", ("LoRATier", "MigrationPolicy"))
def test_spec_suspend_wins_before_the_operator_reacts(kind: str) -> None:
    obj = make(kind, {"phase": "Ready"}, generation=3, suspend=True)
    obj["metadata"]["generation"] = 4
    assert health(kind, obj) == ("Suspended", "spec.suspend is true")


@pytest.mark.parametrize("kind", KINDS)
def test_ready_false_overrides_a_healthy_phase(kind: str) -> None:
    healthy_phase = {"Swarm": "Ready", "LoRATier": "Ready", "MigrationPolicy": "Active"}[kind]
    status = {"phase": healthy_phase, "conditions": [cond("Ready", "False", "checkpoint store unreachable")]}
    assert health(kind, make(kind, status)) == ("Progressing", "checkpoint store unreachable")


def test_application_example_points_at_the_chart() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "argocd" / "application.yaml").read_text(encoding="utf-8")))
    apps = {d["metadata"]["name"]: d for d in docs}
    operator = apps["dynamiclora-operator"]["spec"]
    assert operator["source"]["path"] == "charts/dynamiclora"
    assert (ROOT / operator["source"]["path"] / "Chart.yaml").is_file()
    team = apps["dynamiclora-team"]["spec"]
    for name in team["source"]["directory"]["include"].strip("{}").split(","):
        assert (ROOT / team["source"]["path"] / name).is_file(), name
