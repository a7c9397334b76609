"""A finished Job is acted on at once (issue 19: event-driven freshness), not at the next resync."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kopf
import pytest

from dynamiclora.builders.names import ANNOTATION_INPUTS, ANNOTATION_TARGET, base_labels
from dynamiclora.builders.trainjob import TRAINJOB_API_VERSION
from dynamiclora.controllers import handlers
from dynamiclora.controllers.job_events import followups
from dynamiclora.kube import owner_reference
from dynamiclora.settings import OperatorSettings

from .fakekube import FakeKube
from .test_composer import _publish_adapter
from .test_reconcile import _swarm as _one_swarm

NS = "default"


def _job(name: str, owner: dict[str, Any], component: str, state: str = "Complete",
         annotations: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": NS, "labels": base_labels(component),
                         "annotations": annotations or {}, "ownerReferences": [owner_reference(owner)]},
            "status": {"conditions": [{"type": state, "status": "True"}]} if state else {}}  # fmt: skip


def _swarm(kube: FakeKube, settings: OperatorSettings, body: dict[str, Any]) -> dict[str, Any]:
    """The example Swarm cut to one agent and no shared tiers."""
    body["spec"]["agents"] = body["spec"]["agents"][:1]
    body["spec"].pop("sharedTiers", None)
    return _one_swarm(kube, settings, body)


def test_followups_name_the_owner_the_tiers_written_and_their_swarm(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    swarm = _swarm(kube, settings, swarm_body)
    ctx = kube.objects[("LoRATier", NS, "support-alice-context")]
    policy = kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "MigrationPolicy", "metadata": {"name": "p"}})
    assert followups(kube, _job("t", ctx, "trainer")) == [("LoRATier", "support-alice-context"), ("Swarm", "support")]
    migration = _job("m", policy, "consolidator", annotations={ANNOTATION_TARGET: "support-alice-agent",
                                                                ANNOTATION_INPUTS: "support-alice-context"})
    assert followups(kube, migration) == [("MigrationPolicy", "p"), ("LoRATier", "support-alice-agent"),
                                          ("LoRATier", "support-alice-context"), ("Swarm", "support")]  # fmt: skip
    assert followups(kube, _job("c", swarm, "composer")) == [("Swarm", "support")]


def test_a_finished_training_job_gets_its_version_composed_without_waiting_for_the_resync(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    _swarm(kube, settings, swarm_body)
    tier = kube.objects[("LoRATier", NS, "support-alice-context")]
    _publish_adapter(settings, "support-alice-context", tmp_path, seed=0)  # what the Job published
    rt = handlers.Runtime(kube, settings)
    running = kube.add(_job("support-alice-context-train-v1", tier, "trainer", state=""))
    asyncio.run(handlers.on_job_finished(rt, running))
    assert "currentVersion" not in (kube.objects[("LoRATier", NS, tier["metadata"]["name"])].get("status") or {})

    done = dict(running, status={"conditions": [{"type": "Complete", "status": "True"}]})
    asyncio.run(handlers.on_job_finished(rt, done))
    # The tier took the version, and the Swarm, reconciled right after, started the compose Job for it.
    assert kube.objects[("LoRATier", NS, tier["metadata"]["name"])]["status"]["currentVersion"] == 1
    jobs = kube.list("Job", NS)
    assert [j["metadata"]["labels"].get("dynamiclora.io/component") for j in jobs].count("composer") == 1

    seen: list[str] = []

    async def record(rt: Any, body: Any) -> None:
        seen.append(body["metadata"]["name"])

    monkeypatch.setattr(handlers, "KINDS", {p: (k, record) for p, (k, _) in handlers.KINDS.items()})
    asyncio.run(handlers.on_job_finished(rt, done))  # the same Job's later events: nothing more
    assert seen == []
    follower = handlers.Runtime(kube, settings, leadership=type("L", (), {"leader": False})())  # type: ignore[arg-type]
    asyncio.run(handlers.on_job_finished(follower, dict(done, metadata={**done["metadata"], "uid": "other"})))
    assert seen == []  # a follower never reconciles


def test_a_finished_trainjob_is_followed_up_like_a_job(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    """Kubeflow Trainer's TrainJob carries the operator's labels and owner: its completion triggers the same
    reconciles (the kopf handler for trainjobs forwards it to ``on_job_finished``)."""
    _swarm(kube, settings, swarm_body)
    ctx = kube.objects[("LoRATier", NS, "support-alice-context")]
    train_job = dict(_job("support-alice-context-train-v1", ctx, "trainer"), apiVersion=TRAINJOB_API_VERSION,
                     kind="TrainJob")  # fmt: skip
    assert followups(kube, train_job) == [("LoRATier", "support-alice-context"), ("Swarm", "support")]
    previous, registry = kopf.get_default_registry(), kopf.OperatorRegistry()
    kopf.set_default_registry(registry)  # a registry of its own: the process-wide one is left as it was
    try:
        handlers._register_jobs()
    finally:
        kopf.set_default_registry(previous)
    watched = {(h.selector.group, h.selector.any_name) for h in registry._watching.get_all_handlers()}
    assert watched == {("batch", "jobs"), ("trainer.kubeflow.org", "trainjobs")}
