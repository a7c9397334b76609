"""Migration bandwidth really limits a policy: a concurrency cap and a per-period budget reserved per Job."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from dynamiclora.controllers.policy import result_path
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.results import write_result

from .fakekube import FakeKube
from .test_reconcile import NS, _max_migrations, _policy, _policy_pass, _publish, _store, _swarm

AGENTS = [f"a{i:02d}" for i in range(20)]


def _job_names(kube: FakeKube) -> list[str]:
    return sorted(j["metadata"]["name"] for j in kube.list("Job", NS))


def _complete(kube: FakeKube, settings: OperatorSettings, job: str, migrated: int) -> None:
    """The consolidation Job reports ``migrated`` components and finishes."""
    report = {"migrated": migrated, "bypassed": 0, "throttled": 0, "movedEnergyFraction": 0.1, "dryRun": False}
    write_result(result_path(_store(settings), NS, job), json.dumps({"mode": "migrate", "changed": True,
                                                                      "report": report}))
    kube.objects[("Job", NS, job)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}


def _throttled(status: dict[str, Any]) -> dict[str, str]:
    """Source tier -> reason of its newest decision, for those held back."""
    newest = {d["sourceTier"]: d for d in status["decisions"]}
    return {s: d["reason"] for s, d in newest.items() if d["outcome"] == "Throttled"}


def test_twenty_due_agents_launch_one_job_at_a_time_within_the_budget(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    swarm_body["spec"]["agents"] = [{"name": a} for a in AGENTS]
    _swarm(kube, settings, swarm_body)
    _policy(kube, bandwidth={"maxMigrationsPerPeriod": 3, "period": "1h", "maxConcurrentJobs": 1})
    for a in AGENTS:
        for _ in range(2):  # every agent is past the stability window (2)
            _publish(settings, f"support-{a}-context", tmp_path)

    # Cap 1: one Job, holding the whole budget; the other 19 are throttled, each with the reason, once.
    st = _policy_pass(kube, settings).wire()
    (first,) = _job_names(kube)
    assert _max_migrations(kube.objects[("Job", NS, first)]) == 3 and st["reservations"] == {first: 3}
    held = _throttled(st)
    assert len(held) == 19 and all("concurrency cap" in r and "maxConcurrentJobs" in r for r in held.values())
    assert st["migrationsThrottled"] == 19
    st = _policy_pass(kube, settings).wire()  # the Job still runs: nothing launched, nothing recorded twice
    assert _job_names(kube) == [first] and len(st["decisions"]) == 19

    # The Job moved the whole budget: no launch for the rest of the period, and why.
    _complete(kube, settings, first, migrated=3)
    st = _policy_pass(kube, settings).wire()
    assert _job_names(kube) == [first] and st["migrationsThisPeriod"] == 3 and st["reservations"] == {}
    assert st["decisions"][19]["outcome"] == "Migrated"
    held = _throttled(st)
    assert len(held) == 19 and all("bandwidth exhausted" in r for r in held.values())
    _policy_pass(kube, settings)
    assert _job_names(kube) == [first]

    # The period rolls over: again one Job, with the fresh budget.
    policy = kube.objects[("MigrationPolicy", NS, "p")]
    policy["status"]["periodStart"] = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat()
    st = _policy_pass(kube, settings).wire()
    second = next(j for j in _job_names(kube) if j != first)
    assert len(_job_names(kube)) == 2 and st["migrationsThisPeriod"] == 0 and st["reservations"] == {second: 3}

    # It moves 1 of its 3: the 2 left go to the next Job, and only they.
    _complete(kube, settings, second, migrated=1)
    st = _policy_pass(kube, settings).wire()
    third = [j for j in _job_names(kube) if j not in (first, second)]
    assert len(third) == 1 and st["reservations"] == {third[0]: 2}
    assert _max_migrations(kube.objects[("Job", NS, third[0])]) == 2


def test_concurrent_jobs_never_hold_more_than_the_budget(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    swarm_body["spec"]["agents"] = [{"name": a} for a in AGENTS]
    _swarm(kube, settings, swarm_body)
    _policy(kube, bandwidth={"maxMigrationsPerPeriod": 4, "period": "1h", "maxConcurrentJobs": 3})
    for a in AGENTS:
        for _ in range(2):
            _publish(settings, f"support-{a}-context", tmp_path)
    st = _policy_pass(kube, settings).wire()
    jobs = _job_names(kube)
    grants = [_max_migrations(kube.objects[("Job", NS, j)]) for j in jobs]
    # The budget is split over the free slots (2 + 2); a third Job would get nothing, so it waits.
    assert len(jobs) == 2 and sum(grants) == 4 and st["reservations"] == dict(zip(jobs, grants, strict=True))
    reasons = set(_throttled(st).values())
    assert len(_throttled(st)) == 18 and len(reasons) == 1 and "bandwidth exhausted" in reasons.pop()
    # A restarted operator (same status) launches nothing more: the reservations are persisted.
    _policy_pass(kube, settings)
    assert _job_names(kube) == jobs
