"""The PEFT stack of a training run: base model, frozen slower tiers, one trainable tier.

All adapters are LoRA adapters of one ``PeftModel`` and all are active in the forward pass
(``output = base(x) + Σ_frozen ΔW x + ΔW_target x``); only the target adapter's parameters require
gradients, so the target learns the residual the slower tiers leave. Frozen tiers stay separate (not
merged into the base) so the run can prove they are untouched.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynamiclora.memory.peft_io import CONFIG_FILE, WEIGHTS_FILE
from dynamiclora.memory.stack import freeze_except
from dynamiclora.storage import CheckpointStore, open_store, parse_tier_ref

TARGET = "target"
ADAPTER_CONFIG = CONFIG_FILE
ADAPTER_WEIGHTS = WEIGHTS_FILE


class TierMismatchError(ValueError):
    """A tier's rank, target modules or shapes do not fit the base model."""


def read_adapter_config(directory: Path) -> dict[str, Any]:
    """Parse ``adapter_config.json`` of an adapter directory (errors name the file)."""
    import json

    path = Path(directory) / ADAPTER_CONFIG
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise TierMismatchError(f"{path}: missing (not a PEFT adapter directory)") from None
    except json.JSONDecodeError as e:
        raise TierMismatchError(f"{path}: invalid JSON ({e.msg})") from None
    if not isinstance(cfg, dict) or str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise TierMismatchError(f"{path}: not a LoRA adapter config")
    return cfg


def load_base(path: str) -> tuple[Any, Any]:
    """Load tokenizer and causal LM (float32, eval mode) from a local directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(path).is_dir():
        raise TierMismatchError(f"base model {path}: no such directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise TierMismatchError(f"base model {path}: cannot be loaded ({e})") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of the base model by path (the LM head excluded: never a LoRA target here)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}


def check_targets(model: nn.Module, target_modules: Sequence[str], rank: int, label: str) -> None:
    """Fail clearly when a target module name is absent or ``rank`` exceeds a module's dimensions."""
    linears = linear_modules(model)
    leaves = {n.rsplit(".", 1)[-1] for n in linears}
    missing = sorted(set(target_modules) - leaves)
    if missing:
        raise TierMismatchError(
            f"{label}: target module(s) {missing} not found in the base model; "
            f"its linear modules are {sorted(leaves)}"
        )
    for name, mod in linears.items():
        if name.rsplit(".", 1)[-1] in target_modules and rank > min(mod.in_features, mod.out_features):
            raise TierMismatchError(
                f"{label}: rank {rank} exceeds module {name} ({mod.out_features}x{mod.in_features}); "
                f"use a rank <= {min(mod.in_features, mod.out_features)}"
            )


def check_adapter(model: nn.Module, directory: Path, label: str) -> dict[str, Any]:
    """Check an adapter directory against the base model's module names and shapes."""
    from safetensors import safe_open

    cfg = read_adapter_config(directory)
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        raise TierMismatchError(f"{label}: regex target_modules are not supported ({targets!r})")
    check_targets(model, list(targets), int(cfg.get("r", 1)), label)
    linears = linear_modules(model)
    with safe_open(str(Path(directory) / ADAPTER_WEIGHTS), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
            for part in ("lora_A", "lora_B"):
                if f".{part}." not in key:
                    continue
                module = key.split(f".{part}.")[0].removeprefix("base_model.model.")
                shape = tuple(f.get_slice(key).get_shape())
                mod = linears.get(module)
                if mod is None:
                    raise TierMismatchError(f"{label}: module {module} of the adapter is not in the base model")
                want = mod.in_features if part == "lora_A" else mod.out_features
                got = shape[1] if part == "lora_A" else shape[0]
                if got != want:
                    raise TierMismatchError(
                        f"{label}: {key} has shape {list(shape)} but {module} needs {want} "
                        f"{'inputs' if part == 'lora_A' else 'outputs'} (adapter of another base model?)"
                    )
    return cfg


def lora_config(rank: int, alpha: float, targets: Sequence[str], dropout: float, base: str) -> Any:
    """The PEFT config of the trained tier."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # PEFT annotates int but accepts a float
        target_modules=list(targets),
        lora_dropout=dropout,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base,
    )


def _scaling(cfg: Any) -> float:
    """PEFT's LoRA scaling of a config (object or ``adapter_config.json`` dict): alpha / r, or / sqrt(r)."""
    keys = ("r", "lora_alpha", "use_rslora")
    doc: dict[str, Any] = cfg if isinstance(cfg, dict) else {k: getattr(cfg, k, None) for k in keys}
    r, alpha = float(doc["r"]), float(doc["lora_alpha"])
    return alpha / math.sqrt(r) if doc.get("use_rslora") else alpha / r


def build_stack(model: Any, config: Any, frozen: Sequence[tuple[str, Path]], init_dir: Path | None) -> Any:
    """Wrap ``model`` with the trainable target adapter and the frozen tiers, all active.

    Args:
        model: the base model (checked with :func:`check_targets` beforehand).
        config: the target's LoRA config (:func:`lora_config`).
        frozen: ``(label, adapter directory)`` of each frozen tier (checked with :func:`check_adapter`).
        init_dir: adapter directory to initialise the target from (same rank and targets), or None.
    """
    from peft import get_peft_model

    peft_model = get_peft_model(model, config, adapter_name=TARGET)
    names = [TARGET]
    for i, (label, directory) in enumerate(frozen):
        name = f"frozen{i}"
        try:
            peft_model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as e:
            raise TierMismatchError(f"{label}: cannot be loaded onto the base model ({e})") from e
        names.append(name)
    if init_dir is not None:
        load_target(peft_model, init_dir)
    # The LoRA tuner accepts a list and sums every listed adapter in each layer's forward.
    peft_model.base_model.set_adapter(names)
    freeze_except(peft_model, TARGET)
    return peft_model


def load_target(peft_model: Any, directory: Path) -> None:
    """Set the trainable target adapter's weights from an adapter directory (same rank and targets)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(directory / ADAPTER_WEIGHTS))
    # The version may be stored at another scaling than the tier's config (a consolidation writes
    # alpha = r, i.e. scaling 1): rescale B so that the loaded adapter is the same delta.
    factor = _scaling(json.loads((directory / "adapter_config.json").read_text())) / _scaling(
        peft_model.peft_config[TARGET])
    if abs(factor - 1.0) > 1e-12:
        state = {k: (v * factor if "lora_B" in k else v) for k, v in state.items()}
    result = set_peft_model_state_dict(peft_model, state, adapter_name=TARGET)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise TierMismatchError(f"{directory}: keys not in the tier: {unexpected[:5]}")


def target_parameters(peft_model: Any) -> dict[str, torch.Tensor]:
    """The trainable parameters of the target adapter, by name (order is stable)."""
    return {n: p for n, p in peft_model.named_parameters() if p.requires_grad}


def frozen_snapshot(peft_model: Any) -> dict[str, torch.Tensor]:
    """Copies of every non-target parameter (base and frozen tiers), for the 'only target changed' check."""
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}


def save_target(peft_model: Any, directory: Path, base_model: str) -> Path:
    """Write the target adapter as a PEFT/vLLM adapter directory (adapter_config + safetensors)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(peft_model, adapter_name=TARGET)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(directory / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    cfg = copy.deepcopy(peft_model.peft_config[TARGET])
    cfg.inference_mode = True
    cfg.base_model_name_or_path = base_model
    cfg.save_pretrained(str(directory))
    if not (directory / ADAPTER_CONFIG).exists():  # pragma: no cover - PEFT layout change guard
        raise RuntimeError(f"PEFT did not write {directory / ADAPTER_CONFIG}")
    return directory


def fetch_tier(ref_text: str, dest: Path, default_store: CheckpointStore | None = None) -> tuple[Path, dict[str, Any]]:
    """Download a tier reference (latest version when none is given) into ``dest``; its directory and
    what the trainer records of it (uri, version, digest)."""
    ref = parse_tier_ref(ref_text)
    store = open_store(ref.store_uri) if default_store is None else default_store
    version = ref.version
    if version is None:
        latest = store.latest(ref.namespace, ref.tier)
        if latest is None:
            raise TierMismatchError(f"{ref_text}: the tier has no published version")
        version = latest.version
    got = store.download(ref.namespace, ref.tier, version, dest)
    return dest, {"uri": got.uri, "version": got.version, "digest": got.digest}
