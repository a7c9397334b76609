"""Operator settings: one validated dataclass, filled from ``dynamiclora run`` options or env vars."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields


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
    local_executor: bool = field(
        default=False,
        metadata={
            "help": "label Jobs and inference pods for the local executor (dynamiclora.io/executor=local)",
            "env": "DYNAMICLORA_LOCAL_EXECUTOR",
        },
    )
    resync_seconds: float = field(
        default=10.0, metadata={"help": "period of the timers that re-check pods, Jobs and records", "env": ""}
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

    def __post_init__(self) -> None:
        if not self.pvc_mount_root.startswith("/"):
            raise ValueError(f"pvc_mount_root must be an absolute path, got {self.pvc_mount_root!r}")
        if not self.scratch_dir.startswith("/"):
            raise ValueError(f"scratch_dir must be an absolute path, got {self.scratch_dir!r}")
        if self.resync_seconds <= 0:
            raise ValueError("resync_seconds must be positive")
        if not 0 < self.metrics_port < 65536:
            raise ValueError(f"metrics_port out of range: {self.metrics_port}")

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
