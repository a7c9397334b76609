"""PEFT adapter directories <-> :data:`TierDelta`.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` with keys like
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``. Loading folds the module's LoRA
scaling (``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA, honouring ``rank_pattern`` and
``alpha_pattern`` with PEFT's matching rule) into ``B``. Saving writes a plain LoRA config (one ``r``,
``rank_pattern`` empty), zero-pads modules of lower rank (exact: padded terms contribute nothing) and
divides ``B`` by the scaling, so both PEFT and vLLM load the directory unchanged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .lowrank import LowRankDelta, TierDelta

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")


@dataclass(frozen=True)
class AdapterMeta:
    """The parts of an adapter config the memory core needs to write it back."""

    r: int = field(metadata={"help": "LoRA rank"})
    lora_alpha: float = field(metadata={"help": "LoRA alpha"})
    target_modules: list[str] = field(metadata={"help": "PEFT target_modules"})
    base_model_name_or_path: str | None = field(default=None, metadata={"help": "base model reference"})
    use_rslora: bool = field(default=False, metadata={"help": "scaling alpha/sqrt(r) instead of alpha/r"})

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"AdapterMeta.r must be >= 1, got {self.r}")
        if self.lora_alpha <= 0:
            raise ValueError(f"AdapterMeta.lora_alpha must be > 0, got {self.lora_alpha}")

    def scaling(self, r: int | None = None, alpha: float | None = None) -> float:
        """PEFT's scaling for rank ``r`` and ``alpha`` (defaults: this config's)."""
        r = self.r if r is None else r
        alpha = self.lora_alpha if alpha is None else alpha
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _match(pattern: Mapping[str, Any], name: str) -> Any:
    # PEFT's get_pattern_key rule: a key matches a suffix of the module name at a "." boundary.
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return None


def load_adapter(path: str | Path) -> tuple[TierDelta, AdapterMeta]:
    """Load a PEFT LoRA adapter directory as a tier delta (scaling folded into ``B``).

    Raises:
        ValueError: unsupported features (DoRA, bias, embeddings, modules_to_save) or malformed
            files, naming the file and key.
        FileNotFoundError: the directory lacks the config or the weights.
    """
    root = Path(path)
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no adapter config")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ValueError(f"{cfg_path}: peft_type is {cfg.get('peft_type')!r}, only LORA is supported")
    for flag, what in (("use_dora", "DoRA"), ("lora_bias", "LoRA bias")):
        if cfg.get(flag):
            raise ValueError(f"{cfg_path}: {flag}=true ({what}) is not supported")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"{cfg_path}: bias={cfg.get('bias')!r} is not supported, only 'none'")
    for name in ("r", "lora_alpha"):
        if not isinstance(cfg.get(name), int | float) or cfg[name] <= 0:
            raise ValueError(f"{cfg_path}: field {name!r} must be a positive number, got {cfg.get(name)!r}")
    targets = cfg.get("target_modules") or []
    meta = AdapterMeta(
        r=int(cfg["r"]), lora_alpha=float(cfg["lora_alpha"]),
        target_modules=sorted(targets) if isinstance(targets, list) else [str(targets)],
        base_model_name_or_path=cfg.get("base_model_name_or_path"), use_rslora=bool(cfg.get("use_rslora")),
    )
    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    tensors = _load_weights(root)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise ValueError(f"{root / WEIGHTS_FILE}: key {key!r} is not a LoRA A/B weight (unsupported)")
        module = m["module"].removeprefix(PREFIX)
        factors.setdefault(module, {})[m["which"]] = tensor
    out: TierDelta = {}
    for module, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            raise ValueError(f"{root / WEIGHTS_FILE}: module {module!r} has only lora_{''.join(pair)}")
        A, B = pair["A"], pair["B"]
        r_conf = _match(rank_pattern, module) or meta.r
        if A.shape[0] != r_conf:
            raise ValueError(
                f"{root / WEIGHTS_FILE}: module {module!r} has rank {A.shape[0]} but the config says {r_conf}"
            )
        alpha = _match(alpha_pattern, module) or meta.lora_alpha
        scale = meta.scaling(int(r_conf), float(alpha))
        out[module] = LowRankDelta((B.to(torch.float32) * scale).contiguous(), A.to(torch.float32).contiguous())
    return out, meta


def _load_weights(root: Path) -> dict[str, torch.Tensor]:
    st = root / WEIGHTS_FILE
    if st.is_file():
        return load_file(str(st))
    legacy = root / "adapter_model.bin"
    if legacy.is_file():
        loaded = torch.load(str(legacy), map_location="cpu", weights_only=True)
        return dict(loaded)
    raise FileNotFoundError(f"{root}: neither {WEIGHTS_FILE} nor adapter_model.bin exists")


def default_target_modules(tier: Mapping[str, LowRankDelta]) -> list[str]:
    """Short module names (``q_proj``...) of the tier's modules, PEFT's usual ``target_modules``."""
    return sorted({m.rsplit(".", 1)[-1] for m in tier})


def save_adapter(
    tier: Mapping[str, LowRankDelta],
    path: str | Path,
    r: int | None = None,
    lora_alpha: float | None = None,
    target_modules: Sequence[str] | None = None,
    base_model_name_or_path: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tier delta as a PEFT LoRA adapter directory that PEFT and vLLM load unchanged.

    Args:
        tier: module path -> delta (e.g. ``model.layers.0.self_attn.q_proj``).
        path: directory (created); the two files are written to temporary names then renamed.
        r: adapter rank; default the tier's maximum module rank. Lower-rank modules are zero-padded.
        lora_alpha: default ``r`` (scaling 1).
        target_modules: PEFT ``target_modules``; default the short names of the tier's modules.
            Modules matched but absent from the tier get zero ``B`` in PEFT, so the output is exact.
        base_model_name_or_path: recorded in the config.
        dtype: tensor dtype on disk.

    Returns:
        The directory.
    """
    if not tier:
        raise ValueError("save_adapter: the tier has no modules")
    max_rank = max(d.rank for d in tier.values())
    r = max(max_rank, 1) if r is None else r
    if r < max_rank:
        big = [m for m, d in tier.items() if d.rank > r]
        raise ValueError(f"save_adapter: r={r} but modules {big[:3]} have rank up to {max_rank}; truncate first")
    alpha = float(r) if lora_alpha is None else float(lora_alpha)
    meta = AdapterMeta(r, alpha, list(target_modules or default_target_modules(tier)), base_model_name_or_path)
    # PEFT only creates LoRA layers for targeted modules and silently drops weights of the others.
    missed = [m for m in tier if not any(m == t or m.endswith("." + t) for t in meta.target_modules)]
    if missed:
        raise ValueError(
            f"save_adapter: target_modules {meta.target_modules} do not cover modules {missed[:3]}; "
            "pass the union of the tiers' targets (or omit target_modules)"
        )
    scale = meta.scaling()
    tensors: dict[str, torch.Tensor] = {}
    for module, delta in sorted(tier.items()):
        d_out, d_in = delta.shape
        B = torch.zeros(d_out, r, dtype=torch.float64)
        A = torch.zeros(r, d_in, dtype=torch.float64)
        B[:, : delta.rank] = delta.B.to(torch.float64) / scale
        A[: delta.rank] = delta.A.to(torch.float64)
        tensors[f"{PREFIX}{module}.lora_A.weight"] = A.to(dtype).contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = B.to(dtype).contiguous()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_c = out / (WEIGHTS_FILE + ".tmp"), out / (CONFIG_FILE + ".tmp")
    save_file(tensors, str(tmp_w), metadata={"format": "pt"})
    tmp_c.write_text(json.dumps(_peft_config(meta), indent=2, sort_keys=True))
    tmp_w.replace(out / WEIGHTS_FILE)
    tmp_c.replace(out / CONFIG_FILE)
    return out


def _peft_config(meta: AdapterMeta) -> dict[str, Any]:
    """A full LoraConfig dict from PEFT itself, so every field PEFT/vLLM expect is present."""
    from peft import LoraConfig

    cfg = LoraConfig(
        r=meta.r, target_modules=list(meta.target_modules), lora_dropout=0.0,
        bias="none", use_rslora=meta.use_rslora, base_model_name_or_path=meta.base_model_name_or_path,
    )
    d = cfg.to_dict()
    d["target_modules"] = sorted(meta.target_modules)
    # LoraConfig annotates lora_alpha as int but PEFT and vLLM both compute with floats.
    d["lora_alpha"] = int(meta.lora_alpha) if float(meta.lora_alpha).is_integer() else meta.lora_alpha
    out: dict[str, Any] = json.loads(json.dumps(d, default=_jsonable))
    return out


def _jsonable(obj: object) -> object:
    if isinstance(obj, set | frozenset):
        return sorted(obj)  # type: ignore[type-var]
    return str(obj)
