"""Why a Job failed, in one line, from what the kubelet recorded (so events say it without pod logs).

Job containers set ``terminationMessagePolicy: FallbackToLogsOnError``: the kubelet (or, in the local
cluster, the executor standing in for it) copies the termination-message file or, when the container
wrote none, the tail of its log into ``state.terminated.message``. The entrypoints end a failure with a
single ``error: ...`` line, and ``--result-file /dev/termination-log`` writes ``{"error": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal

from dynamiclora.api.conditions import Reason
from dynamiclora.kube import Kube, KubeError, Obj

# The current label first; the legacy one is what clusters before Kubernetes 1.27 set.
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
# A TrainJob's pods carry the name of its JobSet, which is the TrainJob's.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
MAX_REASON_CHARS = 512


def failure_reason(kube: Kube, job: Obj) -> str:
    """The last error line of the Job's newest failed pod, else the Job's own failure condition ("")."""
    cond: Obj = next((c for c in job.get("status", {}).get("conditions") or []
                      if c.get("type") == "Failed" and c.get("status") == "True"), {})  # fmt: skip
    # The Job controller's reason wins when it ended the Job itself (deadline, pod failure policy):
    # the pods then show only the signal that killed them. A TrainJob's says only that its JobSet failed.
    if cond.get("reason") and cond["reason"] != "BackoffLimitExceeded" and job.get("kind") != "TrainJob":
        return f"{cond['reason']}: {cond.get('message', '')}"[:MAX_REASON_CHARS]
    pods: list[Obj] = []
    with contextlib.suppress(KubeError):  # the reason is a courtesy: never fail the reconcile for it
        pods = _job_pods(kube, job)
    for pod in _in_telling_order(pods, job):
        reason = pod_failure(pod)
        if reason:
            return reason[:MAX_REASON_CHARS]
    return str(cond.get("message", ""))[:MAX_REASON_CHARS]


def _in_telling_order(pods: list[Obj], job: Obj) -> list[Obj]:
    """The newest pod first (a retried pod's latest failure), except in an indexed (distributed) Job: there the
    first pod to end is the cause and the others only report losing it, so the earliest end comes first."""
    if job.get("spec", {}).get("completionMode") != "Indexed":
        return sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp", "")), reverse=True)

    def ended(pod: Obj) -> tuple[str, bool]:
        states = [(cs.get("state") or {}).get("terminated") or {}
                  for cs in (pod.get("status") or {}).get("containerStatuses") or []]  # fmt: skip
        # Times have whole seconds: within one, a pod killed outright goes before peers that lost it.
        return (min((str(t["finishedAt"]) for t in states if t.get("finishedAt")), default="~"),  # "~" sorts last
                not any(int(t.get("exitCode") or 0) == 128 + signal.SIGKILL for t in states))

    return sorted(pods, key=ended)


def unschedulable(kube: Kube, job: Obj) -> str:
    """Why the Job's pods cannot start, in the scheduler's words ("" when none is pending on it): a training
    that cannot be placed (GPUs, memory, node selectors) is reported while it waits, not at its deadline."""
    pods: list[Obj] = []
    with contextlib.suppress(KubeError):  # a courtesy, as the failure reason is
        pods = _job_pods(kube, job)
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase", "Pending") != "Pending":
            continue
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                return f"pod {pod['metadata']['name']} cannot be scheduled: {c.get('message', '')}"[:MAX_REASON_CHARS]
    return ""


def _job_pods(kube: Kube, job: Obj) -> list[Obj]:
    """The pods of a Job or TrainJob (each kind's own label: a running training's pass lists once or twice)."""
    meta = job["metadata"]
    labels = (JOBSET_NAME_LABEL,) if job.get("kind") == "TrainJob" else JOB_NAME_LABELS
    for label in labels:
        pods = kube.list("Pod", meta["namespace"], {label: meta["name"]})
        if pods:
            return pods
    return []


def pod_failure(pod: Obj) -> str:
    """The first failed container's last message line, or its exit code; "" when none failed."""
    status = pod.get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if not term or not term.get("exitCode"):
            continue
        text, code = str(term.get("message") or ""), int(term["exitCode"])
        # A container killed by a signal wrote no error: its log tail is whatever it was doing, not a reason.
        line = distributed_failure(text) or (error_line(text) if code > 128 else last_line(text))
        if line:
            return line
        why = f" ({term['reason']})" if term.get("reason") not in (None, "", "Error") else ""
        return f"container {cs.get('name')} exited with code {code}{why or _signal(code)}"
    return f"{status['reason']}: {status.get('message', '')}" if status.get("reason") else ""


def _signal(code: int) -> str:
    """What an exit code above 128 says: the signal that killed the process."""
    with contextlib.suppress(ValueError):
        if code > 128:
            name = signal.Signals(code - 128).name
            return f": killed by {name}" + (" (out of memory, a lost node or a kill)" if name == "SIGKILL" else "")
    return ""


def error_line(message: str) -> str:
    """The error a failed entrypoint reported (its result document or an ``error:`` line), else ""."""
    if doc := _error_document(message):
        return doc
    line = last_line(message)
    return line if line.startswith("error:") else ""


def last_line(message: str) -> str:
    """The headline of a ``{"error": ...}`` result document, else the last non-empty line (of a log)."""
    if doc := _error_document(message):
        return doc
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _error_document(message: str) -> str:
    """The headline of a ``{"error": ...}`` result document, "" when ``message`` is not one."""
    with contextlib.suppress(ValueError):
        doc = json.loads(message)
        if isinstance(doc, dict) and doc.get("error"):
            return str(doc["error"]).strip().split("\n", 1)[0]
    return ""


# torchrun's accounts of a failed run (torch.distributed.elastic): a rendezvous error names its class; a
# worker that died is the "Root Cause" block of a ChildFailedError, whose last line is a border of "=".
_RENDEZVOUS = re.compile(r"\b((?:Rendezvous\w*|DistNetwork|DistStore)Error)\b:?[ \t]*([^\n]*)")
_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):(.*)", re.S)
RENDEZVOUS_FAILED, WORKER_FAILED = "rendezvous failed", "worker rank"


def distributed_failure(message: str) -> str:
    """One line saying how a ``torchrun`` run failed (rendezvous, or which worker died and how), or "" when
    the message is not torchrun's."""
    if m := _RENDEZVOUS.search(message):
        return f"{RENDEZVOUS_FAILED} ({m.group(1)}): {m.group(2).strip() or 'see the pod log'}"
    root = _ROOT_CAUSE.search(message)
    if root is None:
        return ""
    block = root.group(1)
    rank = re.search(r"rank\s*:\s*(\d+)", block)
    code = re.search(r"exitcode\s*:\s*(-?\d+)[^\n]*?(SIG[A-Z]+)?\s*$", block, re.M)
    errors = [ln.strip() for ln in message[: root.start()].splitlines() if ln.strip().startswith("error:")]
    how = f"exited with code {code.group(1)}" + (f" ({code.group(2)})" if code and code.group(2) else "") \
        if code else "failed"  # fmt: skip
    return f"{WORKER_FAILED} {rank.group(1) if rank else '?'} {how}" + (f": {errors[-1]}" if errors else "")


def failure_condition_reason(why: str) -> Reason:
    """The condition reason of a failed training Job whose failure reads ``why``."""
    if why.startswith(RENDEZVOUS_FAILED):
        return Reason.RENDEZVOUS_FAILED
    if why.startswith(WORKER_FAILED):
        return Reason.WORKER_FAILED
    return Reason.JOB_FAILED
