"""Why a Job failed, in one line, from what the kubelet recorded (so events say it without pod logs).

Job containers set ``terminationMessagePolicy: FallbackToLogsOnError``: the kubelet (or, in the local
cluster, the executor standing in for it) copies the termination-message file or, when the container
wrote none, the tail of its log into ``state.terminated.message``. The entrypoints end a failure with a
single ``error: ...`` line, and ``--result-file /dev/termination-log`` writes ``{"error": ...}``.
"""

from __future__ import annotations

import contextlib
import json

from dynamiclora.kube import Kube, KubeError, Obj

# The current label first; the legacy one is what clusters before Kubernetes 1.27 set.
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
MAX_REASON_CHARS = 512


def failure_reason(kube: Kube, job: Obj) -> str:
    """The last error line of the Job's newest failed pod, else the Job's own failure condition ("")."""
    cond: Obj = next((c for c in job.get("status", {}).get("conditions") or []
                      if c.get("type") == "Failed" and c.get("status") == "True"), {})  # fmt: skip
    # The Job controller's reason wins when it ended the Job itself (deadline, pod failure policy):
    # the pods then show only the signal that killed them.
    if cond.get("reason") and cond["reason"] != "BackoffLimitExceeded":
        return f"{cond['reason']}: {cond.get('message', '')}"[:MAX_REASON_CHARS]
    meta = job["metadata"]
    pods: list[Obj] = []
    with contextlib.suppress(KubeError):  # the reason is a courtesy: never fail the reconcile for it
        pods = _job_pods(kube, meta["namespace"], meta["name"])
    for pod in sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp", "")), reverse=True):
        reason = pod_failure(pod)
        if reason:
            return reason[:MAX_REASON_CHARS]
    return str(cond.get("message", ""))[:MAX_REASON_CHARS]


def _job_pods(kube: Kube, namespace: str, job_name: str) -> list[Obj]:
    for label in JOB_NAME_LABELS:
        pods = kube.list("Pod", namespace, {label: job_name})
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
        line = last_line(str(term.get("message") or ""))
        if line:
            return line
        why = f" ({term['reason']})" if term.get("reason") not in (None, "", "Error") else ""
        return f"container {cs.get('name')} exited with code {term['exitCode']}{why}"
    return f"{status['reason']}: {status.get('message', '')}" if status.get("reason") else ""


def last_line(message: str) -> str:
    """The headline of a ``{"error": ...}`` result document, else the last non-empty line (of a log)."""
    with contextlib.suppress(ValueError):
        doc = json.loads(message)
        if isinstance(doc, dict) and doc.get("error"):
            return str(doc["error"]).strip().split("\n", 1)[0]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else ""
