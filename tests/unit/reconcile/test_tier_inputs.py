"""Training Jobs: missing inputs wait as a condition; a failed Job's error line reaches events and conditions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.controllers.common import InvalidSpec
from dynamiclora.controllers.conditions import get_condition
from dynamiclora.controllers.inputs import input_exists
from dynamiclora.controllers.tier import TierOutcome
from dynamiclora.settings import OperatorSettings

from .fakekube import FakeKube
from .passes import tier_pass

NS = "default"
TIER = "support-bob-context"
JOB = f"{TIER}-train-v1"


def _records(settings: OperatorSettings, n: int = 30) -> None:
    d = Path(settings.pvc_mount_root) / f"ckpt/dl/interactions/{NS}/support/bob"
    d.mkdir(parents=True, exist_ok=True)
    (d / "batch.jsonl").write_text("".join(
        json.dumps({"agent": "bob", "timestamp": "2026-11-22T00:00:00Z", "prompt": f"q{i}", "response": "a"}) + "\n"
        for i in range(n)))  # fmt: skip


def _setup(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], regression: str | None) -> None:
    from dynamiclora.controllers.swarm import reconcile_swarm

    if regression:
        swarm_body["spec"]["agents"][1]["regressionSet"] = regression
    reconcile_swarm(kube, settings, kube.add(swarm_body))
    _records(settings)


def _pass(kube: FakeKube, settings: OperatorSettings) -> TierOutcome:
    return tier_pass(kube, settings, TIER, NS)


def _args(kube: FakeKube) -> list[str]:
    (job,) = kube.list("Job", NS)
    args: list[str] = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


@pytest.mark.parametrize(
    ("regression", "create"),
    [
        ("regression/bob.jsonl", "file"),  # relative to the storage root
        ("regression/bob", "folder"),  # a folder of .jsonl files
    ],
)
def test_missing_regression_set_waits_without_a_job_then_trains(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], regression: str, create: str
) -> None:
    _setup(kube, settings, swarm_body, regression)
    path = f"{settings.pvc_mount_root}/ckpt/dl/{regression}"

    out = _pass(kube, settings)
    assert not kube.list("Job", NS)
    training, ready = get_condition(out.wire(), "Training"), get_condition(out.wire(), "Ready")
    assert training is not None and ready is not None
    assert (training["status"], training["reason"]) == ("False", "InputMissing") and path in training["message"]
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "InputMissing", training["message"])
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "InputMissing")] and path in out.events[0].message
    assert "failedAttempts" not in out.wire() and out.wire()["phase"] == "Pending"

    out = _pass(kube, settings)  # still missing: the condition stays, without another event
    assert not out.events and not kube.list("Job", NS)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if create == "folder":
        Path(path).mkdir()
        (Path(path) / "set.jsonl").write_text("{}\n")
    else:
        Path(path).write_text("{}\n")
    out = _pass(kube, settings)
    assert [e.reason for e in out.events] == ["TrainingStarted"]
    assert out.wire()["activeJob"] == JOB  # no attempt was spent: no -r1 suffix
    assert get_condition(out.wire(), "Training")["reason"] == "JobRunning"  # type: ignore[index]
    assert get_condition(out.wire(), "Ready")["reason"] == "NoVersionYet"  # type: ignore[index]
    assert _args(kube)[_args(kube).index("--regression-data") + 1] == path


def test_no_regression_set_does_not_block(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    _setup(kube, settings, swarm_body, None)
    assert _pass(kube, settings).wire()["activeJob"] == JOB


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("/opt/image/regression.jsonl", "should match pattern"),  # absolute: a file of the image, or anything
        ("regression/../../other-swarm/bob.jsonl", "should match pattern"),
        ("s3://someone-elses-bucket/bob.jsonl", "the storage is a PVC"),  # this Swarm's storage is a PVC
    ],
)
@pytest.mark.parametrize("field", ["regressionSet", "anchorSet"])
def test_an_input_set_outside_the_storage_is_an_invalid_spec(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], location: str, why: str, field: str
) -> None:
    from dynamiclora.controllers.swarm import reconcile_swarm

    swarm_body["spec"]["agents"][1][field] = location
    with pytest.raises(InvalidSpec, match=why):
        reconcile_swarm(kube, settings, kube.add(swarm_body))


def test_a_tier_without_storage_is_checked_against_the_swarms(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    # Valid on its own (no storage to compare with); its Swarm's storage is a PVC, so the bucket is foreign.
    _setup(kube, settings, swarm_body, None)
    tier = kube.objects[("LoRATier", NS, TIER)]
    assert "storage" not in tier["spec"]
    tier["spec"]["qualityGate"]["regressionSet"] = "s3://someone-elses-bucket/bob.jsonl"
    with pytest.raises(InvalidSpec, match=r"regressionSet: .* the storage is a PVC"):
        _pass(kube, settings)
    assert not kube.list("Job", NS)


def test_an_s3_regression_set_must_be_in_the_storages_bucket() -> None:
    from dynamiclora.api.common import Storage
    from dynamiclora.builders.jobs import storage_path

    storage = Storage.model_validate({"s3": {"bucket": "team-a", "prefix": "dl"}})
    settings = OperatorSettings()
    assert storage_path(storage, "reg/a.jsonl", settings) == "s3://team-a/dl/reg/a.jsonl"
    assert storage_path(storage, "s3://team-a/shared/reg.jsonl", settings) == "s3://team-a/shared/reg.jsonl"
    with pytest.raises(ValueError, match="not in the storage's bucket 'team-a'"):
        storage_path(storage, "s3://team-b/reg.jsonl", settings)
    with pytest.raises(ValueError, match="not relative to the storage root"):
        storage_path(storage, "/etc/passwd", settings)


@pytest.mark.parametrize(
    ("keys", "uri", "exists"),
    [
        (["reg/a.jsonl"], "reg/a.jsonl", True),
        (["reg/a.jsonl.bak"], "reg/a.jsonl", False),  # a key is one object, as the Job reads it
        (["reg/a.jsonl"], "reg/", True),
        (["reg/notes.txt"], "reg/", False),  # a prefix needs .jsonl objects below it
        ([], "reg/a.jsonl", False),
    ],
)
def test_s3_input_exists(settings: OperatorSettings, s3_client: Any, s3_bucket: str, keys: list[str], uri: str,
                         exists: bool) -> None:  # fmt: skip
    for key in keys:
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"{}\n")
    assert input_exists(f"s3://{s3_bucket}/{uri}", settings) is exists


def test_s3_that_cannot_answer_does_not_block(settings: OperatorSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(uri: str) -> Any:
        raise OSError("no route to the endpoint")

    monkeypatch.setattr("dynamiclora.controllers.inputs.record_source", lambda uri, client: unreachable(uri))
    assert input_exists("s3://bucket/reg.jsonl", settings)


def _terminated(message: str | None, code: int = 1, reason: str = "Error") -> dict[str, Any]:
    term: dict[str, Any] = {"exitCode": code, "reason": reason}
    if message is not None:
        term["message"] = message
    return {"containerStatuses": [{"name": "main", "state": {"terminated": term}}]}


TRACEBACK = (
    "step 3 loss 1.2\nTraceback (most recent call last):\n  ...\nerror: --regression-data /x.jsonl: no such file\n"
)


@pytest.mark.parametrize(
    ("pods", "job_condition", "reason"),
    [
        (
            [("batch.kubernetes.io/job-name", _terminated(TRACEBACK))],
            {},
            "error: --regression-data /x.jsonl: no such file",
        ),
        ([("job-name", _terminated("error: boom\n\n"))], {}, "error: boom"),  # the legacy label
        (
            [("job-name", _terminated(json.dumps({"error": "3 malformed record line(s):\n  a.jsonl:1"})))],
            {},
            "3 malformed record line(s):",
        ),  # --result-file /dev/termination-log
        ([("job-name", _terminated(None, 137, "OOMKilled"))], {}, "container main exited with code 137 (OOMKilled)"),
        (
            [("job-name", {"phase": "Failed", "reason": "Evicted", "message": "node low on memory"})],
            {},
            "Evicted: node low on memory",
        ),
        (
            [],
            {"reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"},
            "DeadlineExceeded: Job was active longer than specified deadline",
        ),
        (
            [],
            {"reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
            "Job has reached the specified backoff limit",
        ),
        ([], {}, ""),
    ],
)
def test_failed_job_reports_its_reason(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any],
    pods: list[tuple[str, dict[str, Any]]], job_condition: dict[str, str], reason: str,
) -> None:  # fmt: skip
    _setup(kube, settings, swarm_body, None)
    _pass(kube, settings)
    for i, (label, status) in enumerate(pods):
        kube.add({"kind": "Pod", "metadata": {"name": f"{JOB}-p{i}", "labels": {label: JOB}}, "status": status})
    kube.add({"kind": "Pod", "metadata": {"name": "other", "labels": {"job-name": "other"}},
              "status": _terminated("error: another Job's")})  # fmt: skip
    kube.objects[("Job", NS, JOB)]["status"] = {
        "conditions": [{"type": "Failed", "status": "True", **job_condition}]}  # fmt: skip
    out = _pass(kube, settings)
    expected = f"Job {JOB} failed (attempt 1)" + (f": {reason}" if reason else "")
    failed = [(e.type, e.message) for e in out.events if e.reason == "TrainingFailed"]
    assert failed == [("Warning", expected)]
    # The same pass starts the retry; its Training condition keeps saying why the first attempt failed.
    assert get_condition(out.wire(), "Training")["message"] == (  # type: ignore[index]
        f"Job {JOB}-r1 retries version 1; {expected}"
    )


def test_degraded_condition_carries_the_last_reason(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    _setup(kube, settings, swarm_body, None)
    for attempt in range(3):
        _pass(kube, settings)
        job = kube.get("LoRATier", NS, TIER)["status"]["activeJob"]  # type: ignore[index]
        kube.add({"kind": "Pod", "metadata": {"name": f"{job}-x", "labels": {"job-name": job}},
                  "status": _terminated(f"error: attempt {attempt}")})  # fmt: skip
        kube.objects[("Job", NS, job)]["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    out = _pass(kube, settings)
    degraded = get_condition(out.wire(), "Degraded")
    assert degraded is not None and degraded["reason"] == "TrainingFailing"
    retry = "retrying in 60s (a spec change retries at once)"
    assert degraded["message"] == f"Job {JOB}-r2 failed (attempt 3): error: attempt 2; {retry}"
    assert out.wire()["phase"] == "Failed"


def test_training_job_falls_back_to_logs_for_its_termination_message(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    _setup(kube, settings, swarm_body, None)
    _pass(kube, settings)
    (job,) = kube.list("Job", NS)
    assert job["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_two_swarms_on_one_storage_never_train_on_each_others_records(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    """Issue 16: records live under <prefix>/<namespace>/<swarm>/<agent>; an agent name is not enough."""
    import copy

    from dynamiclora.controllers.swarm import reconcile_swarm

    other = copy.deepcopy(swarm_body)
    other["metadata"]["name"] = "other"
    reconcile_swarm(kube, settings, kube.add(swarm_body))
    reconcile_swarm(kube, settings, kube.add(other))
    _records(settings, 30)  # support's bob
    assert _pass(kube, settings).wire()["activeJob"] == JOB
    out = tier_pass(kube, settings, "other-bob-context", NS)
    assert not out.wire().get("recordsSeen") and not out.wire().get("activeJob")
    assert [j["metadata"]["name"] for j in kube.list("Job", NS)] == [JOB]


def test_a_missing_anchor_set_waits_then_every_job_keeps_its_answers(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    swarm_body["spec"]["agents"][1]["anchorSet"] = "anchors/bob.jsonl"
    swarm_body["spec"]["contextTier"].setdefault("training", {})["anchorWeight"] = 3.0
    _setup(kube, settings, swarm_body, None)
    path = f"{settings.pvc_mount_root}/ckpt/dl/anchors/bob.jsonl"
    out = _pass(kube, settings)
    training = get_condition(out.wire(), "Training")
    assert training is not None and training["reason"] == "InputMissing" and f"anchorSet {path}" in training["message"]
    assert not kube.list("Job", NS)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("{}\n")
    assert _pass(kube, settings).wire()["activeJob"] == JOB
    args = _args(kube)
    assert args[args.index("--anchor-data") + 1] == path and args[args.index("--anchor-weight") + 1] == "3.0"
