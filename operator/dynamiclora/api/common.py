"""Types shared by the three custom resources.

The pydantic models in ``dynamiclora.api`` are the single source of truth for the API: the CRD YAML
is generated from them (``make manifests``), the CLI validates files with them, and the operator parses
objects with them. Rules that the API server must enforce are written twice on purpose: as a pydantic
validator (for the CLI and the operator) and as a CEL expression in ``x-kubernetes-validations`` (for
``kubectl apply``); ``tests/unit/api`` and ``tests/integration/cluster`` check that both reject the same
objects.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

# A Kubernetes resource quantity ("500m", "2Gi", 1). Quantities may be written as numbers in YAML.
Quantity = Annotated[
    int | Annotated[str, Field(max_length=64)],
    Field(description="A Kubernetes quantity such as 500m, 2Gi or 1."),
]
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# A relative path inside a store or a volume: segments that do not start with a dot, so never "..".
_REL_BODY = r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*/?"
REL_PATH = rf"^{_REL_BODY}$"
# An input the Jobs read from the storage (a regression set): relative to the storage root, or an s3:// URI,
# which must then name the storage's own bucket (see outside_storage). Never absolute, never "..".
STORE_LOCATION = rf"^(s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9]/)?{_REL_BODY}$"
# Bounds of free-form input: every string, list and map of the API has one (hostile input, etcd size).
MAX_PATH = 512
MAX_IMAGE = 512
MAX_MAP = 32
MAX_MAP_VALUE = 1024
MAX_PODS = 64  # vLLM pods of one Swarm
MAX_DURATION = "87600h"  # 10 years: beyond it a duration overflows the operator's clock arithmetic
MAX_DURATION_SECONDS = 87600 * 3600


def store_location(description: str) -> Any:
    """An optional input the Jobs read from the storage (:data:`STORE_LOCATION`), e.g. a regression set."""
    return Field(default=None, max_length=MAX_PATH, pattern=STORE_LOCATION, description=description)
MapValue = Annotated[str, Field(max_length=MAX_MAP_VALUE)]


def outside_storage(storage: Storage, location: str) -> str | None:
    """Why ``location`` (a STORE_LOCATION) is not inside ``storage``, or None when it is.

    A relative location is inside by construction (the pattern forbids ``/`` first and ``..``); an
    ``s3://`` one must be in the storage's own bucket: the Jobs read it with the storage's credentials, and
    the operator must not be made to probe (or a Job to read) a bucket the Swarm does not own.
    """
    if not location.startswith("s3://"):
        return None
    if storage.s3 is None:
        return f"{location}: the storage is a PVC, so give a path relative to its root instead of an s3:// URI"
    if not location.startswith(f"s3://{storage.s3.bucket}/"):
        return f"{location} is not in the storage's bucket {storage.s3.bucket!r}"
    return None


def in_storage_cel(location: str, storage: str) -> str:
    """CEL: the string field ``location`` is relative or an s3:// URI in the bucket of the Storage ``storage``."""
    return (f"!has({location}) || !{location}.startsWith('s3://') || "
            f"(has({storage}.s3) && {location}.startsWith('s3://' + {storage}.s3.bucket + '/'))")


def cel(rule: str, message: str, *, reason: str | None = None, field_path: str | None = None) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if reason:
        entry["reason"] = reason
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def duration_seconds(text: str) -> float:
    """Seconds of a duration such as ``1h30m`` (the DURATION pattern)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total, num = 0.0, ""
    i = 0
    while i < len(text):
        if text[i].isdigit() or text[i] == ".":
            num += text[i]
            i += 1
            continue
        unit = "ms" if text[i : i + 2] == "ms" else text[i]
        total += float(num) * units[unit]
        num = ""
        i += len(unit)
    return total


def _bounded_duration(text: str | None) -> str | None:
    if text is not None and duration_seconds(text) > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {text} is longer than {MAX_DURATION} (10 years)")
    return text


# A duration such as 1h30m, at most 10 years (checked by the API server too: CEL duration()).
Duration = Annotated[
    str,
    Field(pattern=DURATION, max_length=32, json_schema_extra={"x-kubernetes-validations": [
        cel(f"duration(self) <= duration('{MAX_DURATION}')", f"must be at most {MAX_DURATION} (10 years)")]}),
    AfterValidator(_bounded_duration),
]


# A Swarm's name names its Service (an RFC 1035 label) and is a label value: both limit it to 63.
SWARM_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_SWARM_NAME = 63


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as Kubernetes stores it (camelCase, no unset optional fields)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class TierLevel(StrEnum):
    """The five tiers, fastest first."""

    CONTEXT = "context"
    AGENT = "agent"
    SWARM = "swarm"
    DOMAIN = "domain"
    FOUNDATION = "foundation"

    @property
    def rank_order(self) -> int:
        """0 for the fastest tier (context), 4 for the slowest (foundation)."""
        return list(TierLevel).index(self)

    @property
    def per_agent(self) -> bool:
        """Whether one tier of this level exists per agent (owned by the Swarm)."""
        return self in (TierLevel.CONTEXT, TierLevel.AGENT)


# CEL map from level name to its order, for rules comparing two levels.
LEVEL_ORDER_CEL = "{'context': 0, 'agent': 1, 'swarm': 2, 'domain': 3, 'foundation': 4}"


class ConsensusRule(StrEnum):
    """How shared tiers combine the updates of many agents."""

    RESONANCE = "resonance"
    MEAN = "mean"
    TIES = "ties"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A standard Kubernetes condition (``metav1.Condition``)."""

    type: str = Field(description="Condition type, e.g. Ready, Progressing, Degraded.", max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="",
        description="CamelCase machine-readable reason of the last transition.",
        max_length=1024,
    )
    message: str = Field(default="", description="Human-readable details.", max_length=32768)
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from."
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace."""

    name: str = Field(description="Secret name.", pattern=DNS_SUBDOMAIN, max_length=253)
    key: str = Field(description="Key inside the Secret.", min_length=1, max_length=253)


class SecretRef(ApiModel):
    """A whole Secret in the same namespace."""

    name: str = Field(description="Secret name.", pattern=DNS_SUBDOMAIN, max_length=253)


class Resources(ApiModel):
    """Compute resources of a container, as in ``corev1.ResourceRequirements``."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=MAX_MAP,
        description="Minimum resources, e.g. {cpu: 2, memory: 8Gi, nvidia.com/gpu: 1}.",
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, max_length=MAX_MAP, description="Maximum resources; GPUs must be set here or in requests."
    )

    def to_k8s(self) -> dict[str, dict[str, str]]:
        """The ``resources`` of a container spec (quantities as strings, empty parts omitted)."""
        out = {}
        if self.requests:
            out["requests"] = {k: str(v) for k, v in self.requests.items()}
        if self.limits:
            out["limits"] = {k: str(v) for k, v in self.limits.items()}
        return out

    @property
    def wants_gpu(self) -> bool:
        """Whether the container requests ``nvidia.com/gpu`` (and must tolerate GPU node taints)."""
        return "nvidia.com/gpu" in self.requests or "nvidia.com/gpu" in self.limits


class S3Storage(ApiModel):
    """An S3 (or S3-compatible) bucket."""

    bucket: str = Field(description="Bucket name.", min_length=3, max_length=63)
    prefix: str = Field(default="dynamiclora", pattern=REL_PATH, max_length=MAX_PATH,
                        description="Key prefix under which everything is stored (no '..' segments).")
    endpoint: str | None = Field(
        default=None,
        description="Endpoint URL for S3-compatible stores (MinIO, Ceph); AWS when unset.",
        pattern=r"^https?://",
        max_length=MAX_PATH,
    )
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]+$", max_length=64, description="Region name.")
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; workload identity when unset.",
    )


class PvcStorage(ApiModel):
    """A PersistentVolumeClaim mounted by the operator, trainers and inference pods."""

    claim_name: str = Field(description="PVC name (must support ReadWriteMany when pods span nodes).",
                            pattern=DNS_SUBDOMAIN, max_length=253)
    path: str = Field(default="dynamiclora", pattern=REL_PATH, max_length=MAX_PATH,
                      description="Folder inside the volume (relative, no '..' segments).")


class Storage(ApiModel):
    """Where checkpoints (and, by default, interaction records) live: exactly one of s3 or pvc."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.s3) != has(self.pvc)", "exactly one of storage.s3 or storage.pvc must be set")
            ]
        }
    )

    s3: S3Storage | None = Field(default=None, description="Store in an S3 bucket.")
    pvc: PvcStorage | None = Field(default=None, description="Store on a PersistentVolumeClaim.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Storage:
        if (self.s3 is None) == (self.pvc is None):
            raise ValueError("exactly one of storage.s3 or storage.pvc must be set")
        return self

    def uri(self, mount_root: str = "/var/lib/dynamiclora/pvc") -> str:
        """The checkpoint-store URI of this storage (``s3://bucket/prefix`` or ``file://``)."""
        if self.s3 is not None:
            return f"s3://{self.s3.bucket}/{self.s3.prefix.strip('/')}"
        assert self.pvc is not None
        return f"file://{mount_root}/{self.pvc.claim_name}/{self.pvc.path.strip('/')}"


class ObjectMeta(ApiModel):
    """The parts of ``metav1.ObjectMeta`` the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    namespace: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


