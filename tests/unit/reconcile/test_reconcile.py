"""Reconcile functions against the in-memory Kube and a real filesystem checkpoint store."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.controllers.common import InvalidSpec
from dynamiclora.controllers.conditions import get_condition, write_status
from dynamiclora.controllers.policy import reconcile_policy, result_path
from dynamiclora.controllers.swarm import reconcile_swarm
from dynamiclora.controllers.tier import reconcile_tier, training_backoff
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.results import write_result
from dynamiclora.storage.uri import open_store

from .fakekube import FakeKube

NS = "default"


def _store(settings: OperatorSettings) -> str:
    return f"file://{settings.pvc_mount_root}/ckpt/dl"


def _publish(settings: OperatorSettings, tier: str, tmp: Path, meta: dict[str, Any] | None = None) -> int:
    f = tmp / "adapter_config.json"
    f.write_text(json.dumps({"tier": tier}))
    stats = tmp / "stats.json"
    stats.write_text(json.dumps({"energy": 2.5, "norm": 1.5, "screenedFraction": 0.4}))
    ref = open_store(_store(settings)).publish(NS, tier, {"adapter_config.json": f, "stats.json": stats}, meta or {})
    return ref.version


def _records(settings: OperatorSettings, agent: str, n: int) -> None:
    d = Path(settings.pvc_mount_root) / "ckpt/dl/interactions" / NS / "support" / agent
    d.mkdir(parents=True, exist_ok=True)
    with (d / "batch.jsonl").open("a") as fh:
        for i in range(n):
            fh.write(json.dumps({"agent": agent, "timestamp": "2026-11-22T00:00:00Z", "prompt": f"q{i}",
                                 "response": "a"}) + "\n")  # fmt: skip


def _swarm(kube: FakeKube, settings: OperatorSettings, body: dict[str, Any]) -> dict[str, Any]:
    live = kube.add(body)
    reconcile_swarm(kube, settings, live)
    return live


def test_swarm_applies_children_idempotently_and_prunes_removed_agents(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    live = kube.add(swarm_body)
    obs = reconcile_swarm(kube, settings, live)
    assert obs.applied[:3] == ["ConfigMap/support-vllm-guard", "Service/support-vllm", "StatefulSet/support-vllm"]
    secrets = {n: kube.get("Secret", NS, n) for n in ("support-vllm-operator-key", "support-vllm-client-key")}
    assert all(secrets.values())
    assert len(kube.list("LoRATier", NS)) == 4
    before = set(kube.objects)
    obs = reconcile_swarm(kube, settings, live)
    assert set(kube.objects) == before  # second pass: same objects, nothing created or deleted
    assert {n: kube.get("Secret", NS, n) for n in secrets} == secrets  # generated keys are never rewritten
    assert obs.applied == []  # and no write at all for unchanged children (bench/scale.py counts them)
    live["spec"]["contextTier"]["rank"] = 4
    obs = reconcile_swarm(kube, settings, live)
    assert obs.applied == ["LoRATier/support-alice-context", "LoRATier/support-bob-context"]
    live["spec"]["inference"]["replicas"] = 3
    assert reconcile_swarm(kube, settings, live).applied == ["StatefulSet/support-vllm"]
    assert kube.get("LoRATier", NS, "support-bob-context")["spec"]["rank"] == 4  # type: ignore[index]
    live["spec"]["agents"] = live["spec"]["agents"][:1]
    obs = reconcile_swarm(kube, settings, live)
    assert obs.deleted_tiers == ["support-bob-agent", "support-bob-context"]
    assert {t["metadata"]["name"] for t in kube.list("LoRATier", NS)} == {"support-alice-agent",
                                                                          "support-alice-context"}


def test_swarm_ready_pods(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]) -> None:
    live = kube.add(swarm_body)
    labels = {"dynamiclora.io/swarm": "support", "dynamiclora.io/component": "inference"}
    ready = {"phase": "Running", "podIP": "127.10.0.5", "conditions": [{"type": "Ready", "status": "True"}]}
    reconcile_swarm(kube, settings, live)
    sts = kube.get("StatefulSet", NS, "support-vllm")
    assert sts is not None
    owned = [{"kind": "StatefulSet", "name": "support-vllm", "uid": sts["metadata"]["uid"], "controller": True}]
    kube.add({"kind": "Pod", "metadata": {"name": "support-vllm-0", "labels": labels, "ownerReferences": owned},
              "status": ready})  # fmt: skip
    kube.add({"kind": "Pod", "metadata": {"name": "support-vllm-1", "labels": labels, "ownerReferences": owned},
              "status": {"phase": "Pending"}})  # fmt: skip
    # A ready pod someone else made with the Swarm's labels never gets the operator's key.
    kube.add({"kind": "Pod", "metadata": {"name": "impostor", "labels": labels},
              "status": {**ready, "podIP": "1.2.3.4"}})  # fmt: skip
    obs = reconcile_swarm(kube, settings, live)
    assert [p.ip for p in obs.ready_pods] == ["127.10.0.5"]
    assert len(obs.pods) == 3


def test_invalid_swarm_is_a_permanent_error(kube: FakeKube, settings: OperatorSettings,
                                            swarm_body: dict[str, Any]) -> None:  # fmt: skip
    swarm_body["spec"]["contextTier"]["plasticity"]["freeThreshold"] = 0.99
    with pytest.raises(InvalidSpec, match="screenThreshold must be greater"):
        reconcile_swarm(kube, settings, kube.add(swarm_body))


def _tier(kube: FakeKube, name: str) -> dict[str, Any]:
    body = kube.get("LoRATier", NS, name)
    assert body is not None
    return body


def _tier_pass(kube: FakeKube, settings: OperatorSettings, name: str) -> Any:
    body = _tier(kube, name)
    out = reconcile_tier(kube, settings, body)
    write_status(kube, body, out.wire())
    return out


def test_tier_training_lifecycle(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any],
                                 tmp_path: Path) -> None:  # fmt: skip
    _swarm(kube, settings, swarm_body)
    name = "support-alice-context"
    out = _tier_pass(kube, settings, name)
    assert get_condition(out.wire(), "Training")["reason"] == "WaitingForRecords"
    assert out.wire()["phase"] == "Pending" and not kube.list("Job", NS)

    _records(settings, "alice", 20)  # minSamples is 16
    out = _tier_pass(kube, settings, name)
    jobs = kube.list("Job", NS)
    assert [j["metadata"]["name"] for j in jobs] == [f"{name}-train-v1"]
    assert out.wire()["activeJob"] == f"{name}-train-v1" and out.wire()["phase"] == "Training"
    assert [(e.type, e.reason) for e in out.events] == [("Normal", "TrainingStarted")]

    # Running Job: a second pass (or a restarted operator) starts nothing new.
    _tier_pass(kube, settings, name)
    assert len(kube.list("Job", NS)) == 1

    # The Job publishes v1 and completes.
    assert _publish(settings, name, tmp_path, {"kind": "training", "finalLoss": 0.5}) == 1
    kube.objects[("Job", NS, f"{name}-train-v1")]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    out = _tier_pass(kube, settings, name)
    st = out.wire()
    assert st["currentVersion"] == 1 and st["recordsConsumed"] == 20 and "activeJob" not in st
    assert "activeJob" not in _tier(kube, name)["status"]  # removed from the stored status, not just ours
    assert st["checkpointUri"].endswith("v000001") and len(st["checkpointSha256"]) == 64
    assert st["history"][0]["loss"] == 0.5 and st["history"][0]["source"] == "training"
    assert st["energy"] == 2.5 and st["screenedFraction"] == 0.4 and st["phase"] == "Ready"
    assert {e.reason for e in out.events} >= {"Promoted", "TrainingSucceeded"}

    # No new records: no new Job.
    _tier_pass(kube, settings, name)
    assert len(kube.list("Job", NS)) == 1


def test_a_distributed_training_job_gets_its_rendezvous_service_and_shows_its_workers(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    swarm_body["spec"]["contextTier"]["training"].update(nodes=2, procsPerNode=2)
    _swarm(kube, settings, swarm_body)
    name = "support-alice-context"
    _records(settings, "alice", 20)
    out = _tier_pass(kube, settings, name)
    job = kube.objects[("Job", NS, f"{name}-train-v1")]
    assert job["spec"]["completionMode"] == "Indexed" and out.wire()["trainingWorkers"] == "2x2"
    svc = kube.objects[("Service", NS, f"{name}-train-v1")]
    assert svc["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    kube.objects[("Job", NS, f"{name}-train-v1")]["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    retry = _tier_pass(kube, settings, name).wire()  # a dead worker failed the Job: retried, distributed again
    assert retry["activeJob"] == f"{name}-train-v1-r1" and retry["trainingWorkers"] == "2x2"
    assert ("Service", NS, f"{name}-train-v1-r1") in kube.objects
    done = {"conditions": [{"type": "Complete", "status": "True"}]}
    kube.objects[("Job", NS, f"{name}-train-v1-r1")]["status"] = done
    assert "trainingWorkers" not in _tier_pass(kube, settings, name).wire()


@pytest.mark.parametrize("collateral", [False, True])
def test_a_tier_recreated_over_its_store_does_not_train_again(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path, collateral: bool
) -> None:
    # Disaster recovery: the objects are gone, the store is not. The Job recorded what it consumed.
    name = "support-alice-context"
    _records(settings, "alice", 20)
    _publish(settings, name, tmp_path, {"kind": "training", "recordsConsumed": 20, "gate": {"accepted": True}})
    _records(settings, "alice", 20)
    rejected = {"accepted": False, "cause": "collateral" if collateral else "regression"}
    _publish(settings, name, tmp_path, {"kind": "training", "recordsConsumed": 40, "gate": rejected})
    _publish(settings, name, tmp_path, {"kind": "consolidation"})  # a migration residual: no count
    _swarm(kube, settings, swarm_body)  # re-applied: the tier has no status

    out = _tier_pass(kube, settings, name)
    # A collateral rejection leaves its records pending (and retried), as for a live tier; any other
    # verdict consumed them.
    assert out.wire()["recordsConsumed"] == (20 if collateral else 40)
    assert [j["metadata"]["name"] for j in kube.list("Job", NS)] == ([f"{name}-train-v4"] if collateral else [])
    assert out.wire()["currentVersion"] == 3  # the newest accepted one (the residual), from the store


def test_a_training_job_records_what_it_consumes(kube: FakeKube, settings: OperatorSettings,
                                                 swarm_body: dict[str, Any]) -> None:  # fmt: skip
    _swarm(kube, settings, swarm_body)
    _records(settings, "alice", 20)
    _tier_pass(kube, settings, "support-alice-context")
    [job] = kube.list("Job", NS)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--records-total") + 1] == "20"


def test_tier_training_failures_are_retried_then_reported(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    _swarm(kube, settings, swarm_body)
    name = "support-bob-context"
    _records(settings, "bob", 30)
    names = []
    for attempt in range(3):
        _tier_pass(kube, settings, name)
        job = _tier(kube, name)["status"]["activeJob"]
        names.append(job)
        kube.objects[("Job", NS, job)]["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
        out = _tier_pass(kube, settings, name)
        assert any(e.reason == "TrainingFailed" and e.type == "Warning" for e in out.events), attempt
    assert names == [f"{name}-train-v1", f"{name}-train-v1-r1", f"{name}-train-v1-r2"]
    st = _tier(kube, name)["status"]
    degraded = get_condition(st, "Degraded")
    assert st["phase"] == "Failed" and degraded["reason"] == "TrainingFailing"
    assert "retrying in 60s" in degraded["message"]  # never gives up silently
    _tier_pass(kube, settings, name)
    assert len(kube.list("Job", NS)) == 3  # backs off ...

    def fail_after(seconds: float) -> str:
        body = kube.objects[("LoRATier", NS, name)]
        body["status"]["lastFailureTime"] = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        _tier_pass(kube, settings, name)
        job = _tier(kube, name)["status"]["activeJob"]
        kube.objects[("Job", NS, job)]["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
        _tier_pass(kube, settings, name)
        return str(job)

    assert fail_after(61) == f"{name}-train-v1-r3"  # ... then retries slowly, doubling the wait
    assert "retrying in 120s" in get_condition(_tier(kube, name)["status"], "Degraded")["message"]
    assert training_backoff(20) == 3600.0  # capped

    body = kube.objects[("LoRATier", NS, name)]  # a spec change (a fix, usually) retries at once
    body["metadata"]["generation"] = int(body["metadata"].get("generation", 1)) + 1
    out = _tier_pass(kube, settings, name)
    assert out.wire()["activeJob"] == f"{name}-train-v1" and "failedAttempts" not in out.wire()
    assert get_condition(out.wire(), "Degraded")["status"] == "False"


def _policy(kube: FakeKube, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "MigrationPolicy",
            "metadata": {"name": "p", "namespace": NS},
            "spec": {"swarmRef": "support", "pairs": [{"source": "context", "target": "agent"}],
                     "stability": {"window": 2}, "interval": "1ms", **spec}}  # fmt: skip
    return kube.add(body)


def _policy_pass(kube: FakeKube, settings: OperatorSettings) -> Any:
    body = kube.get("MigrationPolicy", NS, "p")
    assert body is not None
    out = reconcile_policy(kube, settings, body)
    write_status(kube, body, out.wire())
    return out


def test_policy_launches_migrations_and_records_decisions(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    _swarm(kube, settings, swarm_body)
    _policy(kube)
    out = _policy_pass(kube, settings)
    assert not kube.list("Job", NS)  # no source tier has a window of versions yet
    for _ in range(2):
        _publish(settings, "support-alice-context", tmp_path)
    out = _policy_pass(kube, settings)
    jobs = kube.list("Job", NS)
    assert [j["metadata"]["name"] for j in jobs] == ["mig-p-support-alice-agent-2"]
    args = jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["consolidate", "--mode", "migrate"] and "--max-migrations" in args
    assert "--dry-run" not in args
    assert out.wire()["activeJobs"] == ["mig-p-support-alice-agent-2"] and out.wire()["migrationsPending"] == 1

    # A second pass (e.g. after an operator restart) adopts the running Job instead of starting another.
    _policy_pass(kube, settings)
    assert len(kube.list("Job", NS)) == 1

    # The Job reports 2 migrated + 1 throttled component and publishes a new source version.
    job = "mig-p-support-alice-agent-2"
    write_result(result_path(f"file://{settings.pvc_mount_root}/ckpt/dl", NS, job), json.dumps({
        "mode": "migrate", "changed": True, "report": {
            "migrated": 2, "bypassed": 0, "throttled": 1, "movedEnergyFraction": 0.2, "dryRun": False}}))
    _publish(settings, "support-alice-context", tmp_path, {"kind": "migration-source"})
    kube.objects[("Job", NS, job)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    out = _policy_pass(kube, settings)
    st = out.wire()
    assert st["migrationsDone"] == 2 and st["migrationsThrottled"] == 1 and st["activeJobs"] == []
    assert st["decisions"][-1]["outcome"] == "Migrated" and st["decisions"][-1]["components"] == 2
    # The source version the Job itself published is not new input: no follow-up Job.
    _policy_pass(kube, settings)
    assert len(kube.list("Job", NS)) == 1

    # Re-created over its store (disaster recovery: the objects are gone, the store is not): the policy
    # finds the residual its migration left and starts nothing; a version trained after it is new input.
    del kube.objects[("Job", NS, job)]
    kube.objects[("MigrationPolicy", NS, "p")].pop("status")
    _policy_pass(kube, settings)
    assert not kube.list("Job", NS)
    _publish(settings, "support-alice-context", tmp_path, {"kind": "training"})
    _policy_pass(kube, settings)
    assert [j["metadata"]["name"] for j in kube.list("Job", NS)] == ["mig-p-support-alice-agent-4"]


def test_training_and_a_migration_out_of_one_tier_never_overlap(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    """A training Job starts from the tier's current version; a migration moving content out of that
    version meanwhile would leave the new version holding the content too, served with the destination
    that received it (seen in CI: a flipped fact lost under the old answer, counted twice)."""
    _swarm(kube, settings, swarm_body)
    _policy(kube)
    name = "support-alice-context"
    for _ in range(2):
        _publish(settings, name, tmp_path)
    kube.objects[("LoRATier", NS, name)]["status"] = {"activeJob": f"{name}-train-v3"}  # a training Job runs
    _policy_pass(kube, settings)
    assert not kube.list("Job", NS)  # not now: evaluated again at the next interval
    kube.objects[("LoRATier", NS, name)]["status"] = {}
    _policy_pass(kube, settings)
    (migration,) = kube.list("Job", NS)

    _records(settings, "alice", 20)  # training is due, but the migration reads and rewrites the tier
    out = _tier_pass(kube, settings, name)
    cond = get_condition(out.wire(), "Training")
    assert cond["reason"] == "Waiting" and migration["metadata"]["name"] in cond["message"]
    assert [j["metadata"]["name"] for j in kube.list("Job", NS)] == [migration["metadata"]["name"]]
    kube.objects[("Job", NS, migration["metadata"]["name"])]["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}]}
    _tier_pass(kube, settings, name)
    assert f"{name}-train-v3" in [j["metadata"]["name"] for j in kube.list("Job", NS)]


def test_a_recreated_policy_does_not_evaluate_again_what_a_job_already_judged(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    _swarm(kube, settings, swarm_body)
    _policy(kube)
    for _ in range(2):
        _publish(settings, "support-alice-context", tmp_path)
    # A consolidation Job judged v2 before the disaster (nothing stable: nothing published).
    write_result(result_path(f"file://{settings.pvc_mount_root}/ckpt/dl", NS, "mig-p-support-alice-agent-2"),
                 json.dumps({"mode": "migrate", "changed": False}))  # fmt: skip
    _policy_pass(kube, settings)
    assert not kube.list("Job", NS)
    assert kube.objects[("MigrationPolicy", NS, "p")]["status"]["evaluated"] == {"support-alice-context": 2}


def _max_migrations(job: dict[str, Any]) -> int:
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return int(args[args.index("--max-migrations") + 1])


def test_policy_dry_run_and_bandwidth(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any],
                                      tmp_path: Path) -> None:  # fmt: skip
    _swarm(kube, settings, swarm_body)
    _policy(kube, dryRun=True, bandwidth={"maxMigrationsPerPeriod": 0, "period": "1h", "maxConcurrentJobs": 2})
    for tier in ("support-alice-context", "support-bob-context"):
        for _ in range(2):
            _publish(settings, tier, tmp_path)
    out = _policy_pass(kube, settings)
    # Bandwidth 0 and no bypass: both are throttled without a Job, with the reason, recorded once.
    assert not kube.list("Job", NS)
    assert [d["outcome"] for d in out.wire()["decisions"]] == ["Throttled", "Throttled"]
    assert all("bandwidth exhausted" in d["reason"] for d in out.wire()["decisions"])
    assert len(_policy_pass(kube, settings).wire()["decisions"]) == 2 and out.wire()["migrationsThrottled"] == 2
    body = kube.get("MigrationPolicy", NS, "p")
    assert body is not None
    body["spec"]["bandwidth"]["maxMigrationsPerPeriod"] = 5
    kube.objects[("MigrationPolicy", NS, "p")]["spec"] = body["spec"]
    # Throttled sources were not marked evaluated: the next evaluation launches them.
    out = _policy_pass(kube, settings)
    jobs = kube.list("Job", NS)
    assert len(jobs) == 2
    assert all("--dry-run" in j["spec"]["template"]["spec"]["containers"][0]["args"] for j in jobs)
    # The two Jobs share the period's budget instead of each getting all of it.
    grants = {j["metadata"]["name"]: _max_migrations(j) for j in jobs}
    assert sorted(grants.values()) == [2, 3] and out.wire()["reservations"] == grants


def test_retention_keeps_current_served_and_pinned_versions(
    kube: FakeKube, settings: OperatorSettings, tmp_path: Path
) -> None:
    kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "LoRATier", "metadata": {"name": "dom"},
              "spec": {"level": "domain", "storage": {"pvc": {"claimName": "ckpt", "path": "dl"}},
                       "retention": {"keepVersions": 2}, "pinnedVersion": 2},
              "status": {"servedVersion": 1}})  # fmt: skip
    work = Path(settings.pvc_mount_root) / "ckpt/dl/_work" / NS / "dom"
    for v in range(1, 7):
        _publish(settings, "dom", tmp_path)
        (work / f"v{v:06d}").mkdir(parents=True)
        (work / f"v{v:06d}" / "published.json").write_text("{}")  # what each version's Job left
    out = _tier_pass(kube, settings, "dom")
    assert open_store(_store(settings)).list_versions(NS, "dom") == [1, 2, 5, 6]
    assert sorted(p.name for p in work.iterdir()) == ["v000001", "v000002", "v000005", "v000006"]
    assert any(e.reason == "RetentionApplied" for e in out.events)
    assert out.wire()["currentVersion"] == 6


def test_pinned_version_is_what_gets_composed(kube: FakeKube, settings: OperatorSettings,
                                              swarm_body: dict[str, Any]) -> None:  # fmt: skip
    from dynamiclora.api.swarm import Swarm
    from dynamiclora.controllers.serving import desired_stacks

    live = _swarm(kube, settings, swarm_body)
    ctx = kube.objects[("LoRATier", NS, "support-alice-context")]
    ctx["status"] = {"currentVersion": 5}
    stack = desired_stacks(kube, settings, live, Swarm.model_validate(live))[0]
    assert [(e.tier, e.version) for e in stack.entries] == [("support-alice-context", 5)]
    ctx["spec"]["pinnedVersion"] = 3  # GitOps rollback: the pin wins over the newest version
    pinned = desired_stacks(kube, settings, live, Swarm.model_validate(live))[0]
    assert [(e.tier, e.version) for e in pinned.entries] == [("support-alice-context", 3)]
    assert pinned.label == "c3" and pinned.key != stack.key


def test_policy_runs_consensus_into_the_shared_tier(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    swarm_body["spec"]["agents"][1]["trustWeight"] = 0.5
    _swarm(kube, settings, swarm_body)
    _policy(kube, pairs=[{"source": "agent", "target": "swarm"}], consensus={"rule": "resonance", "minAgents": 2})
    _publish(settings, "support-alice-agent", tmp_path)
    _policy_pass(kube, settings)
    assert not kube.list("Job", NS)  # one agent is below minAgents
    _publish(settings, "support-bob-agent", tmp_path)
    _policy_pass(kube, settings)
    (job,) = kube.list("Job", NS)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["consolidate", "--mode", "consensus"] and args.count("--agent-tier") == 2
    assert args[args.index("--weights") + 1 : args.index("--weights") + 3] == ["1.0", "0.5"]
    assert args[args.index("--rule") + 1] == "resonance"
    assert job["metadata"]["labels"]["dynamiclora.io/tier"] == "support-swarm"


def test_a_child_as_the_api_server_stores_it_is_up_to_date() -> None:
    """The API server drops zero values (``omitempty``) and adds defaults; neither is a change to apply
    (the real server's Service left out ``publishNotReadyAddresses: false`` and was re-applied every resync)."""
    from dynamiclora.controllers.swarm import up_to_date

    desired = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "b"}},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": False, "ports": [{"port": 8000}]}}
    stored = {"metadata": {"name": "s", "labels": {"a": "b"}, "uid": "u"},
              "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 8000, "protocol": "TCP"}]}}
    assert up_to_date(desired, stored)
    assert not up_to_date(desired, {**stored, "spec": {**stored["spec"], "publishNotReadyAddresses": True}})
    assert not up_to_date(desired, {**stored, "metadata": {"name": "s", "labels": {"a": "c"}}})
    assert not up_to_date({**desired, "data": {"k": "v"}}, stored)  # a ConfigMap's data counts too
