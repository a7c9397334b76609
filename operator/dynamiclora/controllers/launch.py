"""Which launcher runs a training Job, and how the operator starts and finds it.

Single-process training is a plain Job. Data-parallel training (``nodes x procsPerNode > 1``) is a Kubeflow
Trainer ``TrainJob`` when a torch-distributed ClusterTrainingRuntime is named (``training.runtime``, else the
operator's ``trainingRuntime`` setting) and the TrainJob CRD is installed; otherwise the operator's own
launcher (an indexed Job and a headless Service for the c10d rendezvous). Both run the same Job entrypoint
with the same arguments (:func:`~dynamiclora.builders.trainjob.train_job` derives the TrainJob from the Job),
and both are followed the same way: ``Complete`` / ``Failed`` conditions.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from dynamiclora.api.tier import TrainingTemplate
from dynamiclora.builders.distributed import needs_rendezvous, rendezvous_service
from dynamiclora.builders.trainjob import TRAINJOB_CRD, train_job
from dynamiclora.controllers.common import job_state, parse_time
from dynamiclora.kube import Kube, KubeError, Obj
from dynamiclora.settings import OperatorSettings

JobKind = Literal["Job", "TrainJob"]


@dataclass(frozen=True)
class Launch:
    """How one training run is launched.

    Attributes:
        kind: the kind of object that runs it (and that the tier's status follows).
        runtime: the ClusterTrainingRuntime of a TrainJob.
        note: why a runtime the tier names is not used (told in an event), else "".
    """

    kind: JobKind
    runtime: str | None = None
    note: str = ""


def choose_launch(kube: Kube, settings: OperatorSettings, t: TrainingTemplate) -> Launch:
    """The launcher of a training run of template ``t`` (the CRD is looked up only for a distributed run)."""
    runtime = t.runtime or settings.training_runtime
    if t.nodes * t.procs_per_node <= 1 or not runtime:
        return Launch("Job")
    if not crd_installed(kube, TRAINJOB_CRD):
        note = ""
        if t.runtime:  # the user asked for it by name: say why the built-in launcher runs instead
            note = (f"training.runtime {t.runtime} needs Kubeflow Trainer (CRD {TRAINJOB_CRD}), which is not "
                    "installed: the operator's own launcher runs this training")  # fmt: skip
        return Launch("Job", note=note)
    return Launch("TrainJob", runtime)


def crd_installed(kube: Kube, name: str) -> bool:
    try:
        return kube.get("CustomResourceDefinition", "", name) is not None
    except KubeError as e:
        if e.status == 403:  # not granted (a chart without it): as if absent, the built-in launcher works
            return False
        raise


def launch(kube: Kube, job: Obj, t: TrainingTemplate, how: Launch) -> Obj | None:
    """Create what runs ``job``: the TrainJob built from it, or the Job (and its rendezvous Service).

    Returns the created object, None when it existed already (a retried pass adopts it).
    """
    if how.kind == "TrainJob":
        assert how.runtime is not None
        return kube.create(train_job(job, t, how.runtime))
    created = kube.create(job)
    if needs_rendezvous(job) and (live := created or kube.get("Job", job["metadata"]["namespace"],
                                                                 job["metadata"]["name"])):  # fmt: skip
        kube.create(rendezvous_service(live))  # after the Job: it owns the Service, which goes with it
    return created


def started_at(job: Obj) -> str | None:
    """When the run started: a Job's ``status.startTime``; a TrainJob has none, so its creation time."""
    when = (job.get("status") or {}).get("startTime") or job["metadata"].get("creationTimestamp")
    return str(when) if when else None


def expired(job: Obj, deadline_s: int, now: dt.datetime | None = None) -> str:
    """Why a TrainJob running past ``training.activeDeadlineSeconds`` must fail, else "".

    A Job enforces that deadline itself; a TrainJob has none, so the operator does (it deletes the TrainJob
    and counts a failed attempt). Time counts from its creation, or from its last resumption when it was
    suspended (Kueue admission); a suspended TrainJob is not running.
    """
    if job.get("kind") != "TrainJob" or job_state(job) != "Running":
        return ""
    suspended = next((c for c in (job.get("status") or {}).get("conditions") or [] if c.get("type") == "Suspended"),
                     None)  # fmt: skip
    if suspended is not None and suspended.get("status") == "True":
        return ""
    since = parse_time((suspended or {}).get("lastTransitionTime") or job["metadata"].get("creationTimestamp"))
    if since is None:
        return ""
    ran = ((now or dt.datetime.now(dt.UTC)) - since).total_seconds()
    if ran <= deadline_s:
        return ""
    return (f"DeadlineExceeded: the TrainJob ran {ran:.0f}s, longer than training.activeDeadlineSeconds "
            f"({deadline_s}s); deleted")  # fmt: skip
