"""What is served where: adapter versions, their fingerprints, and the pods that serve them.

The operator knows every pod's vLLM arguments (it set them), so compatibility checks (rank, base model,
capacity) run here, before any HTTP call, and fail with a message that names the adapter and the pod.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamiclora.serving.errors import AdapterRejected

FINGERPRINT_FILE = "dynamiclora-fingerprint.json"


@dataclass(frozen=True)
class Fingerprint:
    """Greedy output of the base model + adapter on a probe prompt, computed offline with PEFT.

    Served by vLLM with the same prompt token ids, the same generated token ids prove which adapter
    version answers under a name.
    """

    prompt_token_ids: tuple[int, ...] = field(metadata={"help": "probe prompt, as token ids"})
    token_ids: tuple[int, ...] = field(metadata={"help": "expected greedy continuation (EOS ignored)"})

    def __post_init__(self) -> None:
        if not self.prompt_token_ids or not self.token_ids:
            raise ValueError("Fingerprint needs non-empty prompt_token_ids and token_ids")

    def to_json(self) -> dict[str, list[int]]:
        return {"prompt_token_ids": list(self.prompt_token_ids), "token_ids": list(self.token_ids)}

    @classmethod
    def from_json(cls, data: Any, *, source: str = "fingerprint") -> Fingerprint:
        try:
            return cls(
                prompt_token_ids=tuple(int(t) for t in data["prompt_token_ids"]),
                token_ids=tuple(int(t) for t in data["token_ids"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{source}: needs integer lists 'prompt_token_ids' and 'token_ids' ({exc})"
            ) from exc

    @classmethod
    def read(cls, adapter_dir: str | Path) -> Fingerprint | None:
        """The fingerprint stored beside an adapter, or None when there is none."""
        p = Path(adapter_dir) / FINGERPRINT_FILE
        if not p.exists():
            return None
        return cls.from_json(json.loads(p.read_text()), source=str(p))

    def write(self, adapter_dir: str | Path) -> Path:
        p = Path(adapter_dir) / FINGERPRINT_FILE
        p.write_text(json.dumps(self.to_json()))
        return p


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter version to serve under a stable name.

    ``path`` is the directory as the vLLM pod sees it; every version must live at its own path (vLLM's
    prefix cache keys on the path, so reusing a path for new weights could serve stale KV blocks).
    """

    name: str = field(metadata={"help": "stable served model name clients use"})
    path: str = field(metadata={"help": "adapter directory on the pod's filesystem, unique per version"})
    version: str = field(metadata={"help": "version label (for status, logs and results)"})
    rank: int = field(metadata={"help": "largest LoRA rank of the adapter"})
    base_model: str | None = field(metadata={"help": "base_model_name_or_path recorded by PEFT"})
    fingerprint: Fingerprint | None = field(default=None, metadata={"help": "expected greedy output"})

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"AdapterSpec.name must be a non-empty name without spaces, got {self.name!r}")
        if not self.path:
            raise ValueError(f"AdapterSpec.path is empty for adapter {self.name!r}")
        if self.rank < 1:
            raise ValueError(f"AdapterSpec.rank must be >= 1 for adapter {self.name!r}, got {self.rank}")

    @classmethod
    def from_dir(
        cls, name: str, adapter_dir: str | Path, version: str, *, served_path: str | None = None
    ) -> AdapterSpec:
        """Read rank, base model and fingerprint from a PEFT adapter directory.

        Args:
            name: stable served name.
            adapter_dir: the directory readable here.
            version: version label.
            served_path: the same directory as the pod sees it (default: ``adapter_dir``).
        """
        cfg_path = Path(adapter_dir) / "adapter_config.json"
        try:
            cfg = json.loads(cfg_path.read_text())
        except FileNotFoundError as exc:
            raise AdapterRejected(f"{cfg_path}: not found (not a PEFT adapter)", reason="invalid") from exc
        except ValueError as exc:
            raise AdapterRejected(f"{cfg_path}: invalid JSON ({exc})", reason="invalid") from exc
        return cls(
            name=name,
            path=served_path or str(adapter_dir),
            version=version,
            rank=adapter_rank(cfg, source=str(cfg_path)),
            base_model=cfg.get("base_model_name_or_path"),
            fingerprint=Fingerprint.read(adapter_dir),
        )


def adapter_rank(cfg: dict[str, Any], *, source: str = "adapter_config.json") -> int:
    """The largest rank in a PEFT LoRA config (``r`` and any per-module ``rank_pattern``)."""
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterRejected(f"{source}: peft_type {cfg.get('peft_type')!r} is not LORA", reason="invalid")
    r = cfg.get("r")
    if not isinstance(r, int) or r < 1:
        raise AdapterRejected(f"{source}: field 'r' must be a positive integer, got {r!r}", reason="invalid")
    pattern = cfg.get("rank_pattern") or {}
    ranks = [r] + [v for v in pattern.values() if isinstance(v, int)]
    return max(ranks)


def _norm(model: str) -> str:
    return model.rstrip("/")


@dataclass(frozen=True)
class PodTarget:
    """One vLLM server and the arguments the operator started it with."""

    base_url: str = field(metadata={"help": "per-pod URL, e.g. http://<podIP>:8000"})
    max_lora_rank: int = field(metadata={"help": "the pod's --max-lora-rank"})
    base_model: str = field(metadata={"help": "the base model adapters must be trained on"})
    base_model_aliases: tuple[str, ...] = field(
        default=(), metadata={"help": "other names of the same base model (e.g. the trainer's path)"}
    )
    max_cpu_loras: int | None = field(
        default=None, metadata={"help": "the pod's --max-cpu-loras (adapters resident at once)"}
    )
    name: str = field(default="", metadata={"help": "pod name for logs and results"})

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"PodTarget.base_url must be an http(s) URL, got {self.base_url!r}")
        if self.max_lora_rank < 1:
            raise ValueError(f"PodTarget.max_lora_rank must be >= 1, got {self.max_lora_rank}")

    @property
    def label(self) -> str:
        return self.name or self.base_url

    def check(self, spec: AdapterSpec) -> None:
        """Raise :class:`AdapterRejected` unless this pod can serve ``spec``."""
        if spec.rank > self.max_lora_rank:
            raise AdapterRejected(
                f"adapter {spec.name!r} version {spec.version} ({spec.path}) has LoRA rank {spec.rank}, "
                f"above --max-lora-rank={self.max_lora_rank} of pod {self.label}",
                reason="rank_exceeded",
            )
        accepted = {_norm(m) for m in (self.base_model, *self.base_model_aliases)}
        if spec.base_model is None or _norm(spec.base_model) not in accepted:
            raise AdapterRejected(
                f"adapter {spec.name!r} version {spec.version} ({spec.path}) was trained on base model "
                f"{spec.base_model!r}, but pod {self.label} serves {self.base_model!r}"
                + (f" (aliases {list(self.base_model_aliases)})" if self.base_model_aliases else ""),
                reason="base_model_mismatch",
            )

    def check_capacity(self, specs: Sequence[AdapterSpec]) -> None:
        """Refuse more adapters than the pod keeps resident (see docs/serving.md, in-place swaps)."""
        if self.max_cpu_loras is not None and len(specs) > self.max_cpu_loras:
            raise AdapterRejected(
                f"{len(specs)} adapters desired on pod {self.label}, above its --max-cpu-loras="
                f"{self.max_cpu_loras}",
                reason="capacity",
            )
