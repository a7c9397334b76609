"""Training Jobs that outgrow one process (issue 20): torchrun in an indexed Job, and Kueue queueing.

With ``nodes x procsPerNode`` above 1 the training Job becomes an indexed Job (``completions`` =
``parallelism`` = ``nodes``, one pod per node index) whose container runs the same entrypoint under
``torchrun``; the pods find each other through c10d rendezvous at pod 0, reached by the stable name
``<job>-0.<job>`` that an indexed Job's pods get with ``subdomain`` set and the headless Service of the
same name (:func:`rendezvous_service`, owned by the Job so that it goes with it). The processes train
data-parallel (training/distributed.py); rank 0 alone publishes, after the quality gate.
"""

from __future__ import annotations

import copy

from dynamiclora.api.tier import TrainingTemplate
from dynamiclora.kube import Obj, owner_reference

RDZV_PORT = 29400
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods (Kubernetes >= 1.27)
ANNOTATION_WORKERS = "dynamiclora.io/workers"  # "<nodes>x<procsPerNode>", read back into the tier status


def workers(t: TrainingTemplate) -> int:
    """Training processes of one Job."""
    return t.nodes * t.procs_per_node


def torchrun_command(job_name: str, t: TrainingTemplate) -> list[str]:
    """The launcher in front of ``dynamiclora.cli`` (its arguments stay the container's ``args``)."""
    return ["torchrun", f"--nnodes={t.nodes}", f"--nproc-per-node={t.procs_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={job_name}-0.{job_name}:{RDZV_PORT}", f"--rdzv-id={job_name}",
            # A dead worker fails the Job: its retry resumes from the checkpoint in the store.
            "--max-restarts=0", "-m", "dynamiclora.cli"]  # fmt: skip


def shape(job: Obj, t: TrainingTemplate) -> Obj:
    """``job`` (a one-process training Job) made distributed and/or queued as ``t`` asks."""
    out = copy.deepcopy(job)
    meta, spec = out["metadata"], out["spec"]
    if t.queue:
        meta["labels"][KUEUE_QUEUE_LABEL] = t.queue
        spec["suspend"] = True  # Kueue admits it (resumes it) when its quota allows the whole Job
    if workers(t) == 1:
        return out
    name = meta["name"]
    meta["annotations"][ANNOTATION_WORKERS] = f"{t.nodes}x{t.procs_per_node}"
    spec.update(completionMode="Indexed", completions=t.nodes, parallelism=t.nodes)
    pod = spec["template"]["spec"]
    pod["subdomain"] = name
    (container,) = pod["containers"]
    container["command"] = torchrun_command(name, t)
    container.setdefault("ports", []).append({"name": "rdzv", "containerPort": RDZV_PORT})
    return out


def rendezvous_service(job: Obj) -> Obj:
    """The headless Service that gives an indexed training Job's pods their DNS names (owned by the Job)."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": dict(meta["labels"]),
                     "ownerReferences": [owner_reference(job)]},
        "spec": {"clusterIP": "None", "selector": {JOB_NAME_LABEL: meta["name"]},
                 # Rendezvous happens before any pod is Ready.
                 "publishNotReadyAddresses": True,
                 "ports": [{"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT}]},
    }  # fmt: skip


def needs_rendezvous(job: Obj) -> bool:
    return bool(job["spec"].get("completionMode") == "Indexed")
