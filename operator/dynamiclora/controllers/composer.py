"""Who composes the served adapters: a Job from the trainer image, never the operator's process.

Composing a stack needs torch and, for the fingerprint the hot-swap verifies, the base model's weights;
the operator's image has neither. :class:`JobComposer` therefore runs ``dynamiclora compose`` as one Job
per Swarm for every stack not composed yet, and the operator only waits, then hot-swaps. The Job's name
hashes the stacks it composes, so every pass finds the Job the previous one created. At most one compose
Job of a Swarm runs at a time; what changed meanwhile is composed by the next one.

The :class:`Composer` protocol is what ``sync_serving`` is given at start-up; a test may inject one that
runs the same entrypoint in-process.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.inference import job_model_path
from dynamiclora.builders.jobs import build_compose_job, compose_config
from dynamiclora.builders.names import LABEL_COMPONENT, LABEL_SWARM, compose_job_name, label_value
from dynamiclora.controllers.common import job_state, parse_time
from dynamiclora.controllers.job_failure import failure_reason
from dynamiclora.kube import Kube, Obj
from dynamiclora.settings import OperatorSettings
from dynamiclora.training.options import StackSpec

# A failed compose Job is kept this long (its message stays in the Swarm's condition), then deleted so
# the next pass tries again: a transient cause (store outage, evicted pod) must not stop serving for good.
# A completed one whose adapters this operator cannot see is given as long before it counts as a failure.
RETRY_FAILED_AFTER_S = 120.0


@dataclass(frozen=True)
class ComposeProgress:
    """Where the composition of a Swarm's missing stacks stands."""

    job: str | None = None  # the compose Job working on them (or that failed)
    failure: str | None = None  # why the last attempt failed; None while it runs
    done: bool = False  # composed by now (in-process, or the Job just completed): look for them again


class Composer(Protocol):
    """Makes sure the given stacks get composed (see the module docstring)."""

    async def compose(self, body: Obj, sw: Swarm, stacks: list[StackSpec]) -> ComposeProgress: ...


def _finished_at(job: Obj) -> float | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Failed", "Complete") and c.get("status") == "True":
            when = parse_time(c.get("lastTransitionTime"))
            return when.timestamp() if when else None
    return None


class JobComposer:
    """Runs ``dynamiclora compose`` as a Kubernetes Job (trainer image)."""

    def __init__(self, kube: Kube, settings: OperatorSettings) -> None:
        self.kube = kube
        self.settings = settings

    async def compose(self, body: Obj, sw: Swarm, stacks: list[StackSpec]) -> ComposeProgress:
        return await asyncio.to_thread(self._compose, body, sw, stacks)

    def _compose(self, body: Obj, sw: Swarm, stacks: list[StackSpec]) -> ComposeProgress:
        ns, swarm = body["metadata"]["namespace"], body["metadata"]["name"]
        name = compose_job_name(swarm, [s.key for s in stacks])
        jobs = self.kube.list("Job", ns, {LABEL_SWARM: label_value(swarm), LABEL_COMPONENT: "composer"})
        mine = next((j for j in jobs if j["metadata"]["name"] == name), None)
        if mine is not None:
            return self._follow(ns, mine)
        running = [j["metadata"]["name"] for j in jobs if job_state(j) == "Running"]
        if running:  # one at a time: the next Job composes whatever is still missing then
            return ComposeProgress(job=running[0])
        cfg = compose_config(body, sw.spec.storage, stacks, sw.spec.inference.max_lora_rank, sw.spec.base_model.name,
                             job_model_path(sw, self.settings), self.settings)  # fmt: skip
        claim = sw.spec.base_model.pvc.claim_name if sw.spec.base_model.pvc else None
        job = build_compose_job(body, cfg, name, sw.spec.context_tier.training, sw.spec.storage, self.settings, claim)
        self.kube.create(job)
        return ComposeProgress(job=name)

    def _follow(self, ns: str, job: Obj) -> ComposeProgress:
        name = job["metadata"]["name"]
        state = job_state(job)
        if state == "Running":
            return ComposeProgress(job=name)
        finished = _finished_at(job)
        waited = time.time() - finished if finished is not None else 0.0
        if state == "Complete" and waited <= RETRY_FAILED_AFTER_S:
            # It completed after this pass looked for its adapters: look again (done), not a failure.
            return ComposeProgress(job=name, done=True)
        if state == "Failed":
            failure = failure_reason(self.kube, job) or f"compose Job {name} failed"
        else:  # long done, yet a stack it composed is still not where this operator reads it
            failure = ("completed, but its adapters are not visible to the operator (deleted since, or the "
                       "storage PVC is not mounted into the operator pod: see the chart's extraVolumes)")  # fmt: skip
        if waited > RETRY_FAILED_AFTER_S:
            self.kube.delete("Job", ns, name)
        return ComposeProgress(job=name, failure=failure)
