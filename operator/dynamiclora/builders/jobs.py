"""LoRATier / MigrationPolicy / Swarm -> training, consolidation and compose Jobs (pure functions)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dynamiclora.api.common import STORE_LOCATION, Storage, outside_storage
from dynamiclora.api.tier import LoRATierSpec, TrainingStrategy, TrainingTemplate
from dynamiclora.builders.distributed import shape
from dynamiclora.builders.names import (
    ANNOTATION_JOB_KIND,
    ANNOTATION_TARGET,
    ANNOTATION_TRAIN_RECORDS,
    LABEL_POLICY,
    LABEL_SWARM,
    LABEL_TIER,
    base_labels,
    label_value,
)
from dynamiclora.builders.security import restrict
from dynamiclora.kube import Obj, owner_reference
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.results import work_uri
from dynamiclora.training.options import ComposeConfig, ConsolidateConfig, StackSpec, TrainConfig, to_argv


def store_uri(storage: Storage, settings: OperatorSettings) -> str:
    """Checkpoint-store URI as seen from pods (and the operator: it mounts PVCs at the same root)."""
    return storage.uri(settings.pvc_mount_root)


def tier_ref(store: str, namespace: str, tier: str, version: int | None = None) -> str:
    """``STORE/NAMESPACE/TIER[/vNNNNNN]`` as the Job entrypoints take it."""
    ref = f"{store.rstrip('/')}/{namespace}/{tier}"
    return f"{ref}/v{version:06d}" if version else ref


def experience_location(storage: Storage, prefix: str, namespace: str, swarm: str, agent: str,
                        settings: OperatorSettings) -> str:  # fmt: skip
    """Folder (PVC) or S3 prefix holding one agent's interaction records: ``<prefix>/<ns>/<swarm>/<agent>``.

    Namespace and Swarm are part of the path: two Swarms sharing a storage (or a bucket) with an agent of
    the same name never train on each other's records. An S3 prefix ends with ``/``: the Job reads every
    ``.jsonl`` object below it (without the slash it would read one object of that name), and agent ``a``
    never matches agent ``ab``'s records.
    """
    uri = store_uri(storage, settings)
    base = uri.removeprefix("file://")
    return f"{base}/{prefix.strip('/')}/{namespace}/{swarm}/{agent}" + ("/" if storage.s3 is not None else "")


def storage_path(storage: Storage, rel: str, settings: OperatorSettings) -> str:
    """A user-given location (``api.common.STORE_LOCATION``) as the Jobs see it.

    Raises:
        ValueError: the location is outside the storage (absolute, ``..``, another bucket); the API rejects
            such specs, so only an object created before that rule gets here.
    """
    problem = outside_storage(storage, rel) or (None if re.fullmatch(STORE_LOCATION, rel) else
                                                f"{rel!r} is not relative to the storage root")  # fmt: skip
    if problem:
        raise ValueError(problem)
    if rel.startswith("s3://"):
        return rel
    return f"{store_uri(storage, settings).removeprefix('file://').rstrip('/')}/{rel.lstrip('/')}"


def _storage_env_and_volumes(storage: Storage, settings: OperatorSettings) -> tuple[list[Obj], list[Obj], list[Obj]]:
    env: list[Obj] = []
    volumes: list[Obj] = []
    mounts: list[Obj] = []
    if storage.s3:
        s3 = storage.s3
        env.append({"name": "AWS_DEFAULT_REGION", "value": s3.region})
        if s3.endpoint:
            env.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint})
        if s3.credentials_secret_ref:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                env.append({"name": key, "valueFrom": {"secretKeyRef": {
                    "name": s3.credentials_secret_ref.name, "key": key}}})  # fmt: skip
    if storage.pvc:
        claim = storage.pvc.claim_name
        volumes.append({"name": "store", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": "store", "mountPath": f"{settings.pvc_mount_root}/{claim}"})
    return env, volumes, mounts


def _job(
    *,
    name: str,
    namespace: str,
    owner: Obj,
    labels: dict[str, str],
    annotations: dict[str, str],
    template: TrainingTemplate,
    args: list[str],
    storage: Storage,
    settings: OperatorSettings,
    extra_volumes: list[Obj] | None = None,
    extra_mounts: list[Obj] | None = None,
    model_claim: str | None = None,
    ttl_seconds: int = 86400,
) -> Obj:
    env, volumes, mounts = _storage_env_and_volumes(storage, settings)
    if model_claim and not (storage.pvc and storage.pvc.claim_name == model_claim):
        # The base model's weights on their own claim, where model_path() says they are (read-only).
        volumes.append({"name": "base-model", "persistentVolumeClaim": {"claimName": model_claim, "readOnly": True}})
        mounts.append({"name": "base-model", "mountPath": f"{settings.pvc_mount_root}/{model_claim}", "readOnly": True})
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    env.append({"name": "DYNAMICLORA_JOB", "value": name})  # recorded in what the Job publishes (audit trail)
    pod_labels = {**settings.extra_pod_labels, **labels}
    resources = template.resources.to_k8s()
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "containers": [{
            "name": "main",
            "image": template.image,
            "command": ["dynamiclora"],
            "args": args,
            "env": env,
            "resources": resources,
            "volumeMounts": mounts + (extra_mounts or []),
            # The error line the entrypoint ends with reaches the pod status, where the operator reads it.
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": volumes + (extra_volumes or []),
    }  # fmt: skip
    if template.node_selector:
        pod_spec["nodeSelector"] = dict(template.node_selector)
    if template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    if template.resources.wants_gpu:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    restrict(pod_spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": template.backoff_limit,
            "activeDeadlineSeconds": template.active_deadline_seconds,
            "ttlSecondsAfterFinished": ttl_seconds,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


@dataclass(frozen=True)
class ComposeAhead:
    """The served adapter a training Job composes once its version is accepted (``--serve-*``)."""

    swarm: str
    stack: StackSpec  # the agent's stack with the version the Job publishes
    max_lora_rank: int
    base_model_name: str


@dataclass(frozen=True)
class TrainingInputs:
    """Everything a training Job needs besides the tier's own spec (resolved by the reconciler)."""

    model_path: str
    storage: Storage
    experience_prefix: str
    bad_records: str
    new_records: int
    total_records: int
    init_version: int | None
    frozen: list[tuple[str, int]] = field(default_factory=list)  # (tier name, version), slower tiers
    seed: int = 0
    exclude_windows: list[str] = field(default_factory=list)  # "FROM/TO" of quarantined (rejected) records
    replay_boost: int = 0  # retries of an update rejected for collateral forgetting: each rehearses more
    version: int | None = None  # the version this Job produces: its attempts share a work area in the store
    model_claim: str | None = None  # the base model's PVC (spec.baseModel.pvc), mounted read-only
    compose_ahead: ComposeAhead | None = None  # what serving the version will need, composed by the Job itself


def replay_fraction(base: float, boost: int) -> float:
    """The replay share of a (re)try: each retry of a collaterally forgetting update rehearses more."""
    return min(0.9, base + 0.2 * boost) if base > 0 else 0.0


def replay_budget(base: int, boost: int) -> int:
    """The stored questions a (re)try may rehearse: each retry covers as many more as the first attempt."""
    return base * (1 + boost)


def training_config(
    body: Obj, spec: LoRATierSpec, inputs: TrainingInputs, job_name: str, settings: OperatorSettings
) -> TrainConfig:
    """The typed contract of a training Job: what ``dynamiclora train`` parses back from its arguments.

    Built as the entrypoint's own config, so it is validated (``TrainConfig.__post_init__``) in the
    operator, before a Job exists, and the arguments are rendered from it, never written by hand.
    """
    ns, tier = body["metadata"]["namespace"], body["metadata"]["name"]
    store = store_uri(inputs.storage, settings)
    t, p, g = spec.training, spec.plasticity, spec.quality_gate
    protect = p.plastic_rank is not None and p.plastic_rank < spec.rank
    return TrainConfig(
        base_model=inputs.model_path,
        data=experience_location(inputs.storage, inputs.experience_prefix, ns, spec.swarm_ref or "", spec.agent or "",
                                 settings),
        output_store=store, namespace=ns, tier=tier, agent=spec.agent or None,
        frozen=[tier_ref(store, ns, name, version) for name, version in inputs.frozen],
        init_from=tier_ref(store, ns, tier, inputs.init_version) if inputs.init_version else None,
        rank=spec.rank, alpha=spec.alpha, target_modules=list(spec.target_modules), dropout=spec.dropout,
        lr=p.learning_rate, steps=t.max_steps, batch_size=t.batch_size, checkpoint_every=t.checkpoint_every,
        strategy="fsdp" if t.strategy == TrainingStrategy.FSDP else "ddp",
        seed=inputs.seed, threads=settings.trainer_threads, work_dir=f"/work/{job_name}",
        work_store=work_uri(store, ns, tier, inputs.version) if inputs.version else None,
        max_records=max(inputs.new_records, 1), records_total=inputs.total_records,
        exclude_window=list(inputs.exclude_windows),
        bad_lines=inputs.bad_records,  # type: ignore[arg-type]  # the API's Literal["reject", "skip"]
        replay_fraction=replay_fraction(t.replay_fraction, inputs.replay_boost),
        replay_budget=replay_budget(t.replay_budget, inputs.replay_boost),
        screen_threshold=p.screen_threshold, free_threshold=p.free_threshold, free_decay=p.free_decay,
        screened_decay=p.screened_decay, reference_interactions=p.reference_interactions_per_hour,
        energy_budget=p.energy_budget, plastic_rank=p.plastic_rank if protect else None,
        holdout_fraction=g.holdout_fraction, gate_records=g.eval_records, gate_significance=g.significance,
        gate_max_regression=g.max_regression if g.enabled else None,
        regression_data=storage_path(inputs.storage, g.regression_set, settings) if g.regression_set else None,
        anchor_data=storage_path(inputs.storage, t.anchor_set, settings) if t.anchor_set else None,
        # The weight of no anchor set is no choice: left at its default, it changes no Job.
        anchor_weight=t.anchor_weight if t.anchor_set else TrainConfig.anchor_weight,
        **_compose_ahead_args(inputs.compose_ahead),
    )  # fmt: skip


def _compose_ahead_args(ahead: ComposeAhead | None) -> dict[str, Any]:
    if ahead is None:
        return {}
    return {"serve_swarm": ahead.swarm, "serve_stack": ahead.stack.to_text(),
            "serve_max_lora_rank": ahead.max_lora_rank, "serve_base_model_name": ahead.base_model_name}


def build_training_job(
    body: Obj, spec: LoRATierSpec, inputs: TrainingInputs, job_name: str, settings: OperatorSettings
) -> Obj:
    """The Job that trains the next version of a tier on its agent's newest records."""
    ns = body["metadata"]["namespace"]
    tier = body["metadata"]["name"]
    t = spec.training
    args = ["train", *to_argv(training_config(body, spec, inputs, job_name, settings))]
    extra_volumes: list[Obj] = [{"name": "work", "emptyDir": {}}]
    extra_mounts: list[Obj] = [{"name": "work", "mountPath": "/work"}]
    return shape(_job(
        name=job_name,
        namespace=ns,
        owner=body,
        labels={**base_labels("trainer"), LABEL_TIER: label_value(tier)},
        annotations={ANNOTATION_JOB_KIND: "training", ANNOTATION_TRAIN_RECORDS: str(inputs.total_records)},
        template=t,
        args=args,
        storage=inputs.storage,
        settings=settings,
        extra_volumes=extra_volumes,
        extra_mounts=extra_mounts,
        model_claim=inputs.model_claim,
    ), t)


@dataclass(frozen=True)
class ConsolidationInputs:
    """A consolidation decided by a MigrationPolicy evaluation."""

    mode: str  # "migrate" or "consensus"
    target_tier: str
    storage: Storage
    source_tier: str | None = None
    agent_tiers: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # further ConsolidateConfig fields (detector, gate...)
    model_claim: str | None = None  # the base model's PVC, for the consolidation gate (read-only)


def consolidation_config(ns: str, inputs: ConsolidationInputs, settings: OperatorSettings) -> ConsolidateConfig:
    """The typed contract of a consolidation Job (validated here, rendered into its arguments)."""
    store = store_uri(inputs.storage, settings)
    return ConsolidateConfig(
        mode=inputs.mode,  # type: ignore[arg-type]  # "migrate" or "consensus", set by the policy
        dest=tier_ref(store, ns, inputs.target_tier),
        source=tier_ref(store, ns, inputs.source_tier) if inputs.source_tier else None,
        agent_tier=[tier_ref(store, ns, t) for t in inputs.agent_tiers],
        weights=list(inputs.weights) or None,
        **inputs.options,
    )


def build_consolidation_job(
    policy: Obj, inputs: ConsolidationInputs, job_name: str, template: TrainingTemplate, settings: OperatorSettings
) -> Obj:
    """The Job that migrates stable components upward (or combines agents by consensus)."""
    ns = policy["metadata"]["namespace"]
    args = ["consolidate", *to_argv(consolidation_config(ns, inputs, settings))]
    return _job(
        name=job_name,
        namespace=ns,
        owner=policy,
        labels={**base_labels("consolidator"), LABEL_POLICY: label_value(policy["metadata"]["name"]),
                LABEL_TIER: label_value(inputs.target_tier)},
        annotations={ANNOTATION_JOB_KIND: "consolidation", ANNOTATION_TARGET: inputs.target_tier},
        template=template,
        args=args,
        storage=inputs.storage,
        settings=settings,
        model_claim=inputs.model_claim,
    )  # fmt: skip


def compose_config(body: Obj, storage: Storage, stacks: list[StackSpec], max_lora_rank: int, base_model: str,
                   model_dir: str, settings: OperatorSettings) -> ComposeConfig:  # fmt: skip
    """The typed contract of a compose Job: the agents' stacks of one Swarm that are not composed yet."""
    return ComposeConfig(
        store=store_uri(storage, settings), namespace=body["metadata"]["namespace"], swarm=body["metadata"]["name"],
        stack=[s.to_text() for s in stacks], max_lora_rank=max_lora_rank, base_model_name=base_model,
        model_dir=model_dir, threads=settings.trainer_threads,
    )  # fmt: skip


def build_compose_job(body: Obj, cfg: ComposeConfig, job_name: str, template: TrainingTemplate, storage: Storage,
                      settings: OperatorSettings, model_claim: str | None = None) -> Obj:  # fmt: skip
    """The Job (trainer image: torch and the base model's weights) that composes a Swarm's served adapters."""
    return _job(
        name=job_name,
        namespace=body["metadata"]["namespace"],
        owner=body,
        labels={**base_labels("composer"), LABEL_SWARM: label_value(body["metadata"]["name"])},
        annotations={ANNOTATION_JOB_KIND: "compose"},
        template=template,
        args=["compose", *to_argv(cfg)],
        storage=storage,
        settings=settings,
        model_claim=model_claim,
        ttl_seconds=3600,  # one per change of what is served: its output, not the Job, is what lasts
    )
