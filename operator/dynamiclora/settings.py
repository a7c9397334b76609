"""Operator settings: one validated dataclass, filled from ``dynamiclora run`` options or env vars."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path

_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}")
_LABEL_VALUE = re.compile(rf"{_NAME}?")
MIN_AUDIT_KEY_BYTES = 16  # an HMAC key short enough to guess would vouch for nothing


@dataclass(frozen=True)
class OperatorSettings:
    """Process-wide settings of the operator (not per object: those live in the custom resources)."""

    namespace: str | None = field(
        default=None, metadata={"help": "watch only this namespace (default: all namespaces)", "env": "WATCH_NAMESPACE"}
    )
    pvc_mount_root: str = field(
        default="/var/lib/dynamiclora/pvc",
        metadata={
            "help": "where PVCs are mounted in pods (and in the operator's pod): claim C at ROOT/C",
            "env": "DYNAMICLORA_PVC_ROOT",
        },
    )
    pod_labels: str = field(
        default="",
        metadata={
            "help": "labels added to every Job and inference pod the operator creates, as key=value,key=value "
            "(e.g. to select a scheduler, an executor or a mesh policy)",
            "env": "DYNAMICLORA_POD_LABELS",
        },
    )
    adapters_host_root: str = field(
        default="",
        metadata={
            "help": "single-node clusters: a swarm's pods share the node folder ROOT/<namespace>/<swarm>, mounted "
            "at that same path, for their synced adapters instead of an emptyDir per pod",
            "env": "DYNAMICLORA_ADAPTERS_HOST_ROOT",
        },
    )
    training_runtime: str = field(
        default="",
        metadata={
            "help": "Kubeflow Trainer ClusterTrainingRuntime (torch-distributed) that launches data-parallel "
            "training as TrainJobs where the trainjobs.trainer.kubeflow.org CRD is installed; a tier's "
            "training.runtime overrides it. Empty: the operator's own launcher (indexed Job + headless Service)",
            "env": "DYNAMICLORA_TRAINING_RUNTIME",
        },
    )
    allowed_images: str = field(
        default="",
        metadata={
            "help": "image prefixes a custom resource may name, comma-separated (e.g. ghcr.io/dynamiclora/,vllm/); "
            "empty: any. A CR naming another image gets Ready=False reason PolicyDenied and nothing is created",
            "env": "DYNAMICLORA_ALLOWED_IMAGES",
        },
    )
    allowed_service_accounts: str = field(
        default="",
        metadata={
            "help": "service accounts a custom resource may run its Jobs as, comma-separated; empty: any",
            "env": "DYNAMICLORA_ALLOWED_SERVICE_ACCOUNTS",
        },
    )
    secret_label: str = field(
        default="",
        metadata={
            "help": "key=value label a Secret must carry for a custom resource to name it (S3 credentials, "
            "client key); empty: any Secret of the resource's namespace",
            "env": "DYNAMICLORA_SECRET_LABEL",
        },
    )
    resync_seconds: float = field(
        default=10.0, metadata={"help": "period of the timers that re-check pods, Jobs and records", "env": ""}
    )
    feed_seconds: float = field(
        default=1.0,
        metadata={"help": "period of the poll of the stores' feeds: a version published by anyone (not only the "
                  "operator's Jobs) is served this soon instead of on the resync; 0: resync only",
                  "env": "DYNAMICLORA_FEED_SECONDS"},
    )
    reconcile_deadline_seconds: float = field(
        default=30.0,
        metadata={"help": "how long one object's periodic pass may hold one of its kind's slots; a slower pass "
                  "(a hung vLLM pod) runs on without one, so it delays only itself", "env": ""},
    )
    pod_deadline_seconds: float = field(
        default=30.0,
        metadata={"help": "how long one pass may spend on one vLLM pod; pods are reconciled side by side, so a "
                  "stalled pod is reported (Degraded: PodUnresponsive) without holding back the others",
                  "env": "DYNAMICLORA_POD_DEADLINE"},
    )
    vllm_timeout_seconds: float = field(
        default=60.0, metadata={"help": "timeout of one vLLM API call", "env": "DYNAMICLORA_VLLM_TIMEOUT"}
    )
    trainer_threads: int = field(
        default=1, metadata={"help": "CPU threads of each trainer process (local runs)", "env": ""}
    )
    metrics_port: int = field(default=8080, metadata={"help": "port of /metrics", "env": "DYNAMICLORA_METRICS_PORT"})
    scratch_dir: str = field(
        default="/var/lib/dynamiclora/scratch",
        metadata={
            "help": "operator-local folder where adapters of S3-only swarms are composed before upload",
            "env": "DYNAMICLORA_SCRATCH_DIR",
        },
    )
    # Not a `dynamiclora run` option: a key on the command line would show in the process list.
    audit_key: str = field(
        default="",
        repr=False,
        compare=False,
        metadata={
            "help": "HMAC key signing the segments old audit records are compacted into (docs/audit.md); "
            "without a key (here or in audit_key_file) the audit trail is never compacted",
            "env": "DYNAMICLORA_AUDIT_KEY",
        },
    )
    audit_key_file: str = field(
        default="",
        metadata={"help": "file holding the audit key (wins over DYNAMICLORA_AUDIT_KEY)",
                  "env": "DYNAMICLORA_AUDIT_KEY_FILE"},
    )
    audit_compact_threshold: int = field(
        default=256,
        metadata={
            "help": "a tier's audit trail is compacted when an append leaves more loose records than this: "
            "all but the newest audit_keep_loose are folded into one signed segment",
            "env": "DYNAMICLORA_AUDIT_COMPACT_THRESHOLD",
        },
    )
    audit_keep_loose: int = field(
        default=32,
        metadata={"help": "newest audit records left loose by a compaction", "env": "DYNAMICLORA_AUDIT_KEEP_LOOSE"},
    )

    def __post_init__(self) -> None:
        if not self.pvc_mount_root.startswith("/"):
            raise ValueError(f"pvc_mount_root must be an absolute path, got {self.pvc_mount_root!r}")
        if not self.scratch_dir.startswith("/"):
            raise ValueError(f"scratch_dir must be an absolute path, got {self.scratch_dir!r}")
        if min(self.resync_seconds, self.reconcile_deadline_seconds, self.pod_deadline_seconds) <= 0:
            raise ValueError("resync_seconds, reconcile_deadline_seconds and pod_deadline_seconds must be positive")
        if self.feed_seconds < 0:
            raise ValueError(f"feed_seconds must be >= 0 (0: no feed), got {self.feed_seconds}")
        if not 0 < self.metrics_port < 65536:
            raise ValueError(f"metrics_port out of range: {self.metrics_port}")
        if self.adapters_host_root and not self.adapters_host_root.startswith("/"):
            raise ValueError(f"adapters_host_root must be an absolute path, got {self.adapters_host_root!r}")
        if not 0 <= self.audit_keep_loose < self.audit_compact_threshold:
            raise ValueError(
                f"audit_keep_loose ({self.audit_keep_loose}) must be >= 0 and below audit_compact_threshold "
                f"({self.audit_compact_threshold})"
            )
        _ = self.extra_pod_labels  # raises on a malformed list
        _ = self.required_secret_label

    @cached_property
    def audit_signing_key(self) -> bytes | None:
        """The audit key (surrounding whitespace dropped), read once; ``None`` when none is configured.

        Raises:
            ValueError: the key file cannot be read, or the key is shorter than 16 bytes.
        """
        if self.audit_key_file:
            try:
                raw = Path(self.audit_key_file).read_bytes()
            except OSError as e:
                raise ValueError(f"audit_key_file: cannot read {self.audit_key_file}: {e.strerror or e}") from None
            source = self.audit_key_file
        else:
            raw, source = self.audit_key.encode(), "DYNAMICLORA_AUDIT_KEY"
        key = raw.strip()
        if not key:
            return None
        if len(key) < MIN_AUDIT_KEY_BYTES:
            raise ValueError(f"the audit key in {source} is {len(key)} bytes; use at least {MIN_AUDIT_KEY_BYTES}")
        return key

    @property
    def audit_segment_records(self) -> int:
        """Records per compacted segment: what a compaction at the threshold folds."""
        return self.audit_compact_threshold - self.audit_keep_loose

    @property
    def allowed_image_prefixes(self) -> list[str]:
        """``allowed_images`` as a list (empty: any image)."""
        return [p.strip() for p in self.allowed_images.split(",") if p.strip()]

    @property
    def allowed_service_account_names(self) -> list[str]:
        """``allowed_service_accounts`` as a list (empty: any)."""
        return [p.strip() for p in self.allowed_service_accounts.split(",") if p.strip()]

    @property
    def required_secret_label(self) -> tuple[str, str] | None:
        """``secret_label`` parsed; a malformed one raises ValueError."""
        if not self.secret_label.strip():
            return None
        key, sep, value = self.secret_label.strip().partition("=")
        if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise ValueError(f"secret_label: {self.secret_label!r} is not a valid key=value Kubernetes label")
        return key, value

    @property
    def extra_pod_labels(self) -> dict[str, str]:
        """``pod_labels`` parsed; a malformed entry raises ValueError naming it."""
        labels: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in self.pod_labels.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                raise ValueError(f"pod_labels: {item!r} is not a valid key=value Kubernetes label")
            labels[key] = value
        return labels

    @classmethod
    def from_env(cls, **overrides: object) -> OperatorSettings:
        """Settings from environment variables, then explicit overrides (CLI options)."""
        values: dict[str, object] = {}
        for f in fields(cls):
            env = f.metadata.get("env")
            if env and env in os.environ:
                raw = os.environ[env]
                values[f.name] = raw.lower() in ("1", "true", "yes") if f.type in (bool, "bool") else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        for f in fields(cls):
            if f.name in values and f.type in (int, "int"):
                values[f.name] = int(str(values[f.name]))
            if f.name in values and f.type in (float, "float"):
                values[f.name] = float(str(values[f.name]))
        return cls(**values)  # type: ignore[arg-type]
