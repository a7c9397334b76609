"""The ``Swarm`` custom resource: a team of agents served from one base model."""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field, StrictBool, model_validator

from dynamiclora.api.common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    MAX_IMAGE,
    MAX_MAP,
    MAX_PATH,
    MAX_PODS,
    REL_PATH,
    ApiModel,
    Condition,
    MapValue,
    ObjectMeta,
    PvcStorage,
    Resources,
    SecretKeyRef,
    Storage,
    cel,
    in_storage_cel,
    outside_storage,
    store_location,
)
from dynamiclora.api.tier import (
    DEFAULT_TARGET_MODULES,
    MAX_VERSION,
    GateLimits,
    ModuleName,
    Plasticity,
    QualityGate,
    Retention,
    TrainingTemplate,
)

DEFAULT_VLLM_IMAGE = "vllm/vllm-openai-cpu:v0.32.0"
# vLLM 0.32 accepts only these values for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class BaseModelSpec(ApiModel):
    """The base model and where its weights are: exactly one of path, pvc or s3Uri."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "[has(self.path), has(self.pvc), has(self.s3Uri)].filter(x, x).size() == 1",
                    "exactly one of baseModel.path, baseModel.pvc or baseModel.s3Uri must be set",
                )
            ]
        }
    )

    name: str = Field(
        min_length=1, max_length=253, description="Served model name clients use (vLLM --served-model-name)."
    )
    path: str | None = Field(
        default=None,
        pattern=r"^/",
        max_length=MAX_PATH,
        description="Weights baked into the inference image at this absolute path.",
    )
    pvc: PvcStorage | None = Field(default=None, description="Weights on a PersistentVolumeClaim.")
    s3_uri: str | None = Field(
        default=None,
        pattern=r"^s3://[^/]+/.+",
        max_length=MAX_PATH,
        description="Weights in S3 (downloaded by an init container).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> BaseModelSpec:
        if sum(x is not None for x in (self.path, self.pvc, self.s3_uri)) != 1:
            raise ValueError("exactly one of baseModel.path, baseModel.pvc or baseModel.s3Uri must be set")
        return self


class PinnedVersions(ApiModel):
    """Versions an agent's own tiers are pinned to; a level left out follows normal promotion."""

    context: int | None = Field(
        default=None, ge=1, le=MAX_VERSION, description="Serve this version of the context tier."
    )
    agent: int | None = Field(default=None, ge=1, le=MAX_VERSION, description="Serve this version of the agent tier.")


class Agent(ApiModel):
    """One agent of the swarm; the operator creates its context and agent tiers."""

    name: str = Field(pattern=DNS_LABEL, max_length=40, description="Agent name (DNS label).")
    domain: str | None = Field(default=None, max_length=253, description="Profession/domain, informative.")
    description: str | None = Field(default=None, max_length=1024, description="Free text.")
    trust_weight: float = Field(
        default=1.0, ge=0, le=10, description="User-set weight of this agent in consensus of shared tiers."
    )
    regression_set: str | None = store_location(
        "Fixed regression records the quality gate checks every update of this agent against "
        "(.jsonl file or folder): relative to the storage root, or an s3:// URI in the storage's own bucket; "
        "never absolute, never '..'.",
    )
    anchor_set: str | None = store_location(
        "Records whose answers every update of this agent keeps steady (its context tier's "
        "training.anchorSet): relative to the storage root, or an s3:// URI in the storage's own bucket.",
    )
    pinned_versions: PinnedVersions | None = Field(
        default=None,
        description="Pin the agent's tiers to these versions (rollback/roll-forward, GitOps style), e.g. "
        "{context: 3}; remove to resume normal promotion.",
    )


class TierTemplate(ApiModel):
    """Shape of the agents' context tiers, the tiers that train on interaction records."""

    rank: int = Field(default=16, ge=1, le=512, description="LoRA rank.")
    alpha: float = Field(default=32.0, gt=0, le=4096, description="LoRA alpha.")
    target_modules: list[ModuleName] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        min_length=1,
        max_length=64,
        description="Targeted linear modules.",
    )
    plasticity: Plasticity = Field(default_factory=Plasticity, description="Learning, decay and phases.")
    training: TrainingTemplate = Field(default_factory=TrainingTemplate, description="Training Job template.")
    retention: Retention = Field(default_factory=Retention, description="Checkpoint retention.")
    quality_gate: QualityGate = Field(
        default_factory=QualityGate, description="Quality gate of the tiers' new versions."
    )


class AgentTierTemplate(ApiModel):
    """Shape of the agents' agent tiers.

    An agent tier never trains on records: it changes only by migrations from the agent's context tier,
    so its adapter takes the context tier's ``alpha`` and ``targetModules`` and it has no training or
    plasticity settings. Its quality gate judges each migration on the records the context tier holds out.
    """

    rank: int = Field(default=16, ge=1, le=512, description="LoRA rank migrations store the tier at.")
    retention: Retention = Field(default_factory=Retention, description="Checkpoint retention.")
    quality_gate: GateLimits = Field(
        default_factory=GateLimits, description="Quality gate of the migrations into the tier."
    )


class SharedTiers(ApiModel):
    """References to shared LoRATiers (declared in Git) in the same namespace."""

    swarm: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN, max_length=253, description="LoRATier of level swarm."
    )
    domain: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN, max_length=253, description="LoRATier of level domain."
    )
    foundation: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN, max_length=253, description="LoRATier of level foundation."
    )


# Per-agent state lives in each agent's tiers, so a Swarm holds only its spec's list and counts.
MAX_AGENTS = 10_000


class Placement(ApiModel):
    """Which vLLM pods hold each agent's adapter (docs/serving.md, Placement): a bounded set per agent,
    never more adapters on a pod than its ``--max-cpu-loras``, sticky across passes."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.hotReplicas) || self.hotReplicas >= self.replicasPerAgent",
                    "placement.hotReplicas must be at least placement.replicasPerAgent",
                )
            ]
        }
    )

    replicas_per_agent: int = Field(
        default=2, ge=1, le=MAX_PODS,
        description="Pods that hold each agent's adapter (every ready pod when there are fewer).",
    )
    hot_replicas: int | None = Field(
        default=None, ge=1, le=MAX_PODS,
        description="Pods that hold a hot agent's adapter: one whose requests queued for a LoRA slot on a pod "
        "(vLLM's vllm:lora_requests_info lists it waiting) within hotWindowSeconds. Unset: no agent gets more.",
    )
    hot_window_seconds: int = Field(
        default=300, ge=10, le=86_400,
        description="How long after its requests last queued an agent stays hot (then it shrinks back).",
    )
    agent_services: StrictBool = Field(
        default=False,
        description="Give each agent a Service <swarm>-<agent> without selector and an EndpointSlice the operator "
        "keeps to the pods that serve the agent's adapter (for gateways and clients). A pod leaves the slice one "
        "pass before the adapter is unloaded from it.",
    )

    @model_validator(mode="after")
    def _hot_at_least_normal(self) -> Placement:
        if self.hot_replicas is not None and self.hot_replicas < self.replicas_per_agent:
            raise ValueError("placement.hotReplicas must be at least placement.replicasPerAgent")
        return self


class Inference(ApiModel):
    """The vLLM multi-LoRA StatefulSet."""

    replicas: int = Field(default=1, ge=0, le=MAX_PODS, description="Number of vLLM pods.")
    image: str = Field(default=DEFAULT_VLLM_IMAGE, min_length=1, max_length=MAX_IMAGE, description="vLLM server image.")
    port: int = Field(default=8000, ge=1024, le=65535, description="HTTP port of the OpenAI-compatible API.")
    max_loras: int = Field(default=4, ge=1, le=256, description="Adapters active in one batch (--max-loras).")
    max_cpu_loras: int | None = Field(
        default=None, ge=1, le=4096, description="Adapters cached in host memory (--max-cpu-loras)."
    )
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(
        default=64, description="Largest adapter rank the server accepts (--max-lora-rank)."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, le=10_000_000, description="Context length (--max-model-len)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(default="auto", description="Weights dtype.")
    resources: Resources = Field(
        default_factory=Resources,
        description="Resources of each vLLM container. A CPU limit also sizes vLLM's thread pool "
        "(OMP_NUM_THREADS, whole cores rounded up) unless env sets it.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the API key clients and the operator must present."
    )
    extra_args: list[MapValue] = Field(
        default_factory=list, max_length=64, description="Additional vLLM server arguments."
    )
    env: dict[str, MapValue] = Field(
        max_length=MAX_MAP,
        default_factory=dict,
        description="Extra environment variables of the vLLM container (e.g. VLLM_CPU_KVCACHE_SPACE on CPU nodes).",
    )
    placement: Placement = Field(
        default_factory=Placement, description="How many pods hold each agent's adapter, and per-agent routing."
    )


class Experience(ApiModel):
    """Where agents' interaction records (JSONL) land."""

    prefix: str = Field(
        default="interactions",
        min_length=1,
        max_length=MAX_PATH,
        pattern=REL_PATH,
        description="Folder/key prefix in the swarm's storage (no '..' segments); records of agent A of Swarm S in "
        "namespace N are under <prefix>/<N>/<S>/<A>/.",
    )
    bad_records: Literal["reject", "skip"] = Field(
        default="skip", description="What training does with malformed records."
    )


class Consensus(ApiModel):
    """How this swarm's agents weigh in the consensus of its swarm tier.

    The rule, the quorum and the outlier cut are the MigrationPolicy's (``spec.consensus``), which runs
    the consensus Jobs.
    """

    trust_weighting: StrictBool = Field(
        default=True,
        description="Scale each agent's trustWeight by its record at the quality gate (agents whose updates "
        "keep being rejected lose influence); false uses trustWeight alone.",
    )


class SwarmSpec(ApiModel):
    """Desired state of a swarm."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.baseModel.name == oldSelf.baseModel.name",
                    "spec.baseModel.name is immutable",
                    field_path=".baseModel.name",
                ),
                cel(
                    f"self.agents.all(a, {in_storage_cel('a.regressionSet', 'self.storage')})",
                    "spec.agents[].regressionSet must be relative to the storage root or in the storage's own bucket",
                    field_path=".agents",
                ),
                cel(
                    f"self.agents.all(a, {in_storage_cel('a.anchorSet', 'self.storage')})",
                    "spec.agents[].anchorSet must be relative to the storage root or in the storage's own bucket",
                    field_path=".agents",
                ),
            ]
        }
    )

    base_model: BaseModelSpec = Field(description="Base model served by every pod.")
    agents: list[Agent] = Field(
        min_length=1,
        max_length=MAX_AGENTS,
        description="The agents of the swarm (names unique).",
        # A list-map makes the API server itself reject repeated names.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    agent_tier: AgentTierTemplate = Field(default_factory=AgentTierTemplate, description="Agent tiers.")
    context_tier: TierTemplate = Field(default_factory=lambda: TierTemplate(rank=8), description="Context tiers.")
    shared_tiers: SharedTiers = Field(default_factory=SharedTiers, description="Shared tiers referenced by name.")
    inference: Inference = Field(default_factory=Inference, description="vLLM serving.")
    experience: Experience = Field(default_factory=Experience, description="Interaction records.")
    storage: Storage = Field(description="Checkpoint and experience storage.")
    consensus: Consensus = Field(default_factory=Consensus, description="Agent weights in the swarm tier's consensus.")

    @model_validator(mode="after")
    def _unique_agents(self) -> SwarmSpec:
        counts = Counter(a.name for a in self.agents)  # linear: swarms have up to 10,000 agents
        dupes = sorted(n for n, c in counts.items() if c > 1)
        if dupes:
            raise ValueError(f"spec.agents names must be unique (repeated: {', '.join(dupes)})")
        for agent in self.agents:
            for name, location in (("regressionSet", agent.regression_set), ("anchorSet", agent.anchor_set)):
                problem = location and outside_storage(self.storage, location)
                if problem:
                    raise ValueError(f"spec.agents[{agent.name}].{name}: {problem}")
        return self


class SwarmPhase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


MAX_MISSING_LISTED = 10
MAX_UNSERVED_LISTED = 20


class PodStatus(ApiModel):
    """What one vLLM pod serves. Bounded: a pod's adapters are counted, not listed (agents x pods would
    outgrow etcd's object limit); the agents' entries say where each one is served."""

    name: str
    pod_ip: str | None = Field(
        default=None, alias="podIP", description="The pod's IP (the operator addresses pods directly)."
    )
    ready: bool = Field(default=False, description="Kubernetes reports the pod Ready and the operator's last "
                        "serving pass reached it (or had nothing to serve yet).")
    loaded_adapters: int = Field(default=0, ge=0, description="This Swarm's adapters the pod serves as desired.")
    missing_adapters: list[str] = Field(
        default_factory=list,
        max_length=MAX_MISSING_LISTED,
        description=f"Adapters the pod should serve but does not (the first {MAX_MISSING_LISTED}).",
    )


class SwarmStatus(ApiModel):
    """Observed state of a swarm."""

    observed_generation: int | None = Field(default=None, ge=0)
    phase: SwarmPhase = Field(default=SwarmPhase.PENDING)
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    replicas: int | None = Field(default=None, ge=0)
    ready_replicas: int | None = Field(default=None, ge=0)
    agent_count: int | None = Field(default=None, ge=0)
    served_agents: int | None = Field(default=None, ge=0, description="Agents served on every ready pod.")
    served_root: str | None = Field(
        default=None, description="Where the composed adapters live: an agent's is <servedRoot>/<adapterPath>."
    )
    unserved_agents: list[str] = Field(
        default_factory=list, max_length=MAX_UNSERVED_LISTED,
        description=f"Agents not served on every pod they are placed on (the first {MAX_UNSERVED_LISTED}, by "
        "name; agentCount - servedAgents counts them all). What is served of each agent is in the status of its "
        "context LoRATier (serving).",
    )
    pods: list[PodStatus] = Field(default_factory=list, max_length=MAX_PODS)


class Swarm(ApiModel):
    """A ``Swarm`` object."""

    api_version: Literal["dynamiclora.io/v1alpha1"] = "dynamiclora.io/v1alpha1"
    kind: Literal["Swarm"] = "Swarm"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: SwarmSpec
    status: SwarmStatus | None = None
