"""The operator's own reconcilers, run in-process against an in-memory Kubernetes API.

A benchmark that re-implements the schedule measures its re-implementation. Here the decisions are
the product's: :func:`dynamiclora.controllers.tier.reconcile_tier` decides when a tier trains and
builds the training Job (init version, frozen tiers, ``--max-records``, replay, gate, quarantine,
collateral retries); :func:`dynamiclora.controllers.policy.reconcile_policy` decides when a migration is
due and builds the consolidation Job. The Jobs they create are run in-process through the CLI
entrypoints' own parser and handlers (``dynamiclora train`` / ``dynamiclora consolidate``), on a
``file://`` checkpoint store in a temporary directory.

What a cluster adds and this does not: pods, the process boundary, and wall-clock time. Time is the one
simulated input: every settle pass lets the policy evaluate again (its ``interval`` elapsed) and every
window starts a new bandwidth period (windows are at least ``bandwidth.period`` apart).
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamiclora import API_VERSION
from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.jobs import experience_location, store_uri
from dynamiclora.builders.names import ANNOTATION_JOB_KIND
from dynamiclora.builders.tiers import build_agent_tiers
from dynamiclora.cli import build_parser
from dynamiclora.controllers.common import job_state, parse
from dynamiclora.controllers.policy import reconcile_policy
from dynamiclora.controllers.tier import reconcile_tier
from dynamiclora.settings import OperatorSettings
from dynamiclora.training.cli import RESULT_PREFIX

Obj = dict[str, Any]
Log = Callable[[str], None]
NAMESPACE = "bench"
SWARM = "bench"
AGENT = "alice"
POLICY = "bench-migrate"
WORK_MOUNT = "/work/"  # the training Job's emptyDir (build_training_job): a temporary folder here


class MemoryKube:
    """The :class:`dynamiclora.kube.Kube` operations on a dict (no validation, no resourceVersion)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.events: list[tuple[str, str, str, str]] = []
        self._uid = itertools.count(1)

    def _key(self, obj: Obj) -> tuple[str, str, str]:
        return obj["kind"], obj["metadata"].get("namespace", "default"), obj["metadata"]["name"]

    def add(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{next(self._uid)}")
        meta.setdefault("generation", 1)
        self.objects[self._key(obj)] = obj
        return copy.deepcopy(obj)

    def apply(self, obj: Obj) -> Obj:
        live = self.objects.get(self._key(obj))
        if live is None:
            return self.add(obj)
        merged = copy.deepcopy(obj)
        merged["metadata"] = {**live["metadata"], **obj["metadata"]}
        if live.get("status") is not None:
            merged["status"] = live["status"]
        self.objects[self._key(obj)] = merged
        return copy.deepcopy(merged)

    def read_through(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.get(kind, namespace, name)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def list(self, kind: str, namespace: str, labels: Mapping[str, str] | None = None) -> list[Obj]:
        out = []
        for (k, ns, _), obj in sorted(self.objects.items()):
            have = obj["metadata"].get("labels", {})
            if k == kind and ns == namespace and all(have.get(a) == b for a, b in (labels or {}).items()):
                out.append(copy.deepcopy(obj))
        return out

    def create(self, obj: Obj) -> Obj | None:
        return None if self._key(obj) in self.objects else self.add(obj)

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        return self.objects.pop((kind, namespace, name), None) is not None

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        obj = self.objects[(kind, namespace, name)]
        merged = {**(obj.get("status") or {}), **copy.deepcopy(status)}
        obj["status"] = {k: v for k, v in merged.items() if v is not None}
        return copy.deepcopy(obj)

    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        self.events.append((involved["metadata"]["name"], type_, reason, message))


@dataclass
class JobRun:
    """One Job the operator created and the bench ran."""

    name: str
    kind: str  # "training" or "consolidation"
    args: list[str]
    result: dict[str, Any]


class JobFailed(RuntimeError):
    """A Job's entrypoint exited non-zero (the bench stops: a benchmark must not hide failures)."""


def run_entrypoint(args: list[str]) -> dict[str, Any]:
    """Run ``dynamiclora <args>`` in-process (the CLI's parser and handler) and return its result JSON."""
    ns = build_parser().parse_args(args)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = int(ns.func(ns))
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith(RESULT_PREFIX)]
    if code != 0 or not lines:
        tail = "\n".join(out.getvalue().splitlines()[-15:])
        raise JobFailed(f"dynamiclora {args[0]} exited {code}:\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    return result


def job_args(job: Obj) -> list[str]:
    """The container arguments of a Job the operator built."""
    return list(job["spec"]["template"]["spec"]["containers"][0]["args"])


def local_args(args: list[str], work: Path) -> list[str]:
    """The Job's arguments with its emptyDir mount (``/work/``) moved into ``work``: the only rewrite."""
    return [str(work / a.removeprefix(WORK_MOUNT)) if a.startswith(WORK_MOUNT) else a for a in args]


@dataclass
class SimOperator:
    """One swarm of one agent (and optionally a MigrationPolicy) reconciled by the operator's functions."""

    root: Path
    swarm_spec: Obj
    policy_spec: Obj | None = None
    log: Log = print
    train_args: list[str] = field(default_factory=list)  # a peer's own training options (e.g. EWC's)
    kube: MemoryKube = field(default_factory=MemoryKube)
    jobs: list[JobRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings = OperatorSettings(pvc_mount_root=str(self.root / "pvc"), scratch_dir=str(self.root / "scratch"),
                                         trainer_threads=1)  # fmt: skip
        body = self.kube.add({"apiVersion": API_VERSION, "kind": "Swarm",
                              "metadata": {"name": SWARM, "namespace": NAMESPACE}, "spec": self.swarm_spec})
        self.swarm = parse(Swarm, body)
        for tier in build_agent_tiers(body, self.swarm):
            self.kube.add(tier)
        self.tiers = [t["metadata"]["name"] for t in self.kube.list("LoRATier", NAMESPACE)]
        if self.policy_spec is not None:
            self.kube.add({"apiVersion": API_VERSION, "kind": "MigrationPolicy",
                           "metadata": {"name": POLICY, "namespace": NAMESPACE},
                           "spec": {"swarmRef": SWARM, **self.policy_spec}})  # fmt: skip

    @property
    def store(self) -> str:
        """The checkpoint store URI (``file://`` on the simulated PVC)."""
        return store_uri(self.swarm.spec.storage, self.settings)

    def experience_dir(self, agent: str = AGENT) -> Path:
        """Where the agent's interaction records go (what training Jobs read as ``--data``)."""
        return Path(experience_location(self.swarm.spec.storage, self.swarm.spec.experience.prefix, NAMESPACE, SWARM,
                                        agent, self.settings))

    def tier(self, level: str) -> Obj:
        """The live LoRATier of ``level`` (context or agent) of the agent."""
        for t in self.kube.list("LoRATier", NAMESPACE):
            if t["spec"]["level"] == level:
                return t
        raise KeyError(level)

    def new_period(self) -> None:
        """Time passes beyond the policy's bandwidth period (called when a window starts)."""
        pol = self.kube.objects.get(("MigrationPolicy", NAMESPACE, POLICY))
        if pol is not None and pol.get("status"):
            pol["status"].pop("periodStart", None)

    def settle(self, max_passes: int = 20) -> list[JobRun]:
        """Reconcile until no Job is created: run each new Job in-process, mark it finished, repeat."""
        ran: list[JobRun] = []
        for _ in range(max_passes):
            created = self._pass()
            if not created:
                return ran
            for job in created:
                ran.append(self._run(job))
        raise RuntimeError(f"the operator kept creating Jobs after {max_passes} passes")

    def _pass(self) -> list[Obj]:
        before = {k for k in self.kube.objects if k[0] == "Job"}
        for name in self.tiers:
            body = self.kube.objects[("LoRATier", NAMESPACE, name)]
            outcome = reconcile_tier(self.kube, self.settings, copy.deepcopy(body))
            body["status"] = outcome.wire()
        pol = self.kube.objects.get(("MigrationPolicy", NAMESPACE, POLICY))
        if pol is not None:
            if pol.get("status"):
                pol["status"].pop("lastEvaluationTime", None)  # the policy's interval has elapsed
            pol["status"] = reconcile_policy(self.kube, self.settings, copy.deepcopy(pol)).wire()
        return [copy.deepcopy(v) for k, v in sorted(self.kube.objects.items()) if k[0] == "Job" and k not in before]

    def _run(self, job: Obj) -> JobRun:
        name = job["metadata"]["name"]
        kind = job["metadata"]["annotations"].get(ANNOTATION_JOB_KIND, "?")
        args = local_args(job_args(job), self.root / "work") + (self.train_args if kind == "training" else [])
        live = self.kube.objects[("Job", NAMESPACE, name)]
        try:
            result = run_entrypoint(args)
        except JobFailed:
            live["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
            raise
        live["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
        assert job_state(live) == "Complete"
        run = JobRun(name, kind, args, result)
        self.jobs.append(run)
        return run

    def current_version(self, level: str) -> int | None:
        """The version the operator serves of the tier (its status ``currentVersion``)."""
        v = (self.tier(level).get("status") or {}).get("currentVersion")
        return int(v) if v else None
