"""A failed Job's reason in one line, including torchrun's accounts of a distributed run."""

from __future__ import annotations

from dynamiclora.api.conditions import Reason
from dynamiclora.controllers.job_failure import (
    distributed_failure,
    failure_condition_reason,
    last_line,
    pod_failure,
)

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
