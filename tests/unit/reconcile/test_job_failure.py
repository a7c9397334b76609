"""A failed Job's reason in one line, including torchrun's accounts of a distributed run."""

from __future__ import annotations

from typing import Any, cast

from dynamiclora.api.conditions import Reason
from dynamiclora.controllers.job_failure import (
    distributed_failure,
    failure_condition_reason,
    failure_reason,
    last_line,
    pod_failure,
)
from dynamiclora.kube import Kube

# The tail of a launcher log, in the layout of torch.distributed.elastic's ChildFailedError.
DEAD_WORKER = """step 6/20 loss 2.1
error: training interrupted
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
dynamiclora.cli FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-26_11:20:00
  host      : trainer-0
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 4242)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 4242
============================================================"""

RENDEZVOUS = """[W socket.cpp:464] [c10d] The server socket has failed to listen on any local network address.
torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError: The node 'trainer-1_77' timed out while \
waiting for the rendezvous of 'job-abc'
"""


def _pod(message: str, code: int = 1) -> dict[str, object]:
    return {"status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "exitCode": code, "reason": "Error", "message": message}}}]}}


def test_a_dead_worker_is_named_with_its_rank_exit_code_and_the_last_error_line() -> None:
    assert last_line(DEAD_WORKER) == "=" * 60  # what the Job's condition said before
    why = distributed_failure(DEAD_WORKER)
    assert why == "worker rank 1 exited with code -9: error: training interrupted"
    assert pod_failure(_pod(DEAD_WORKER)) == why
    assert failure_condition_reason(why) is Reason.WORKER_FAILED


def test_a_signal_name_is_kept_when_torchrun_prints_one() -> None:
    text = DEAD_WORKER.replace("(pid: 4242)", "(pid: 4242) SIGKILL").replace("error: training interrupted\n", "")
    assert distributed_failure(text) == "worker rank 1 exited with code -9 (SIGKILL)"


def test_a_rendezvous_failure_is_its_own_reason() -> None:
    why = pod_failure(_pod(RENDEZVOUS))
    assert why.startswith("rendezvous failed (RendezvousTimeoutError): The node 'trainer-1_77' timed out")
    assert failure_condition_reason(why) is Reason.RENDEZVOUS_FAILED


def test_other_failures_keep_their_last_line_and_the_job_failed_reason() -> None:
    assert distributed_failure("error: no training records in /data") == ""
    assert pod_failure(_pod('{"error": "no training records in /data"}')) == "no training records in /data"
    assert failure_condition_reason("no training records in /data") is Reason.JOB_FAILED


def test_a_killed_container_is_reported_as_killed_not_by_its_last_log_line() -> None:
    """A worker SIGKILLed (OOM, lost node) wrote no error: its log tail is a training step, not a reason."""
    why = pod_failure(_pod("step 85/160 loss 0.1234 tokens/s 900", code=137))
    assert why == "container trainer exited with code 137: killed by SIGKILL (out of memory, a lost node or a kill)"
    assert pod_failure(_pod("error: disk full", code=137)) == "error: disk full"  # an error it did write wins
    assert pod_failure(_pod("", code=143)) == "container trainer exited with code 143: killed by SIGTERM"
    assert pod_failure(_pod("step 3/9 loss 1.0")) == "step 3/9 loss 1.0"  # an exit code of its own: its last line


def _indexed_pod(name: str, created: str, finished: str, message: str, code: int) -> dict[str, object]:
    term = {"exitCode": code, "reason": "Error", "message": message, "finishedAt": finished}
    return {"metadata": {"name": name, "creationTimestamp": created},
            "status": {"containerStatuses": [{"name": "main", "state": {"terminated": term}}]}}  # fmt: skip


class _Pods:
    def __init__(self, pods: list[dict[str, object]]) -> None:
        self.pods = pods

    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[dict[str, object]]:
        return self.pods


def test_a_distributed_jobs_failure_is_the_first_pod_to_end_not_the_peers_it_took_down() -> None:
    killed = _indexed_pod("t-1-a", "2026-11-27T01:00:00Z", "2026-11-27T01:02:00Z", "step 85/160 loss 0.1", 137)
    peer = _indexed_pod("t-0-b", "2026-11-27T01:00:00Z", "2026-11-27T01:02:01Z", DEAD_WORKER, 1)
    replacement = _indexed_pod("t-1-c", "2026-11-27T01:02:00Z", "2026-11-27T01:02:02Z", "", 143)
    pods = [peer, replacement, killed]
    job: dict[str, Any] = {"metadata": {"name": "t", "namespace": "ns"}, "spec": {"completionMode": "Indexed"},
                           "status": {"conditions": [{"type": "Failed", "status": "True",
                                                      "reason": "BackoffLimitExceeded"}]}}  # fmt: skip
    why = failure_reason(cast(Kube, _Pods(pods)), job)
    assert why.startswith("container main exited with code 137: killed by SIGKILL"), why
    del job["spec"]["completionMode"]  # one process retried: its newest pod's failure
    assert failure_reason(cast(Kube, _Pods(pods)), job).startswith("container main exited with code 143")
    job["spec"]["completionMode"] = "Indexed"  # the same second (times have whole seconds): the killed pod first
    peer = _indexed_pod("t-0-b", "2026-11-27T01:00:00Z", "2026-11-27T01:02:00Z", DEAD_WORKER, 1)
    pods = [peer, replacement, killed]
    assert failure_reason(cast(Kube, _Pods(pods)), job).startswith("container main exited with code 137")
