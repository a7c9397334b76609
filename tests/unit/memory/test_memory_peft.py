"""PEFT integration on the tiny Llama: multi-tier stack, exact serving composition, adapter I/O."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from dynamiclora.memory import (
    Tier,
    TierStack,
    compose,
    load_adapter,
    save_adapter,
    tier_add,
    tier_distance,
)
from dynamiclora_dev.tinymodel import TinyModelConfig, build_model

CFG = TinyModelConfig()
TOKENS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]])


def trained_like_adapter(path: Path, seed: int, **lora: object) -> Path:
    """A PEFT adapter with random non-zero A and B (as after training), saved by PEFT itself."""
    torch.manual_seed(seed)
    model = get_peft_model(build_model(CFG), LoraConfig(init_lora_weights=False, **lora))  # type: ignore[arg-type]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.5)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory) -> list[Tier]:
    root = tmp_path_factory.mktemp("tiers")
    return [
        Tier("foundation", trained_like_adapter(root / "foundation", 1, r=4, lora_alpha=8,
                                                 target_modules=["q_proj", "v_proj"])),
        Tier("agent", trained_like_adapter(root / "agent", 2, r=8, lora_alpha=4, use_rslora=True,
                                           target_modules=["q_proj", "k_proj", "o_proj"])),
        Tier("context", trained_like_adapter(root / "context", 3, r=2, lora_alpha=16,
                                             target_modules=["v_proj", "down_proj"],
                                             rank_pattern={"down_proj": 3}, alpha_pattern={"down_proj": 5})),
    ]


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=TOKENS).logits  # type: ignore[no-any-return]


def test_loaded_delta_equals_peft_delta_weight(tiers: list[Tier]) -> None:
    model = TierStack(tiers).to_peft(build_model(CFG))
    for tier in tiers:
        delta, _ = load_adapter(tier.path)
        for module, d in delta.items():
            layer = model.base_model.model.get_submodule(module)
            peft_dense = layer.get_delta_weight(tier.name)
            assert torch.allclose(d.dense(), peft_dense, atol=1e-6), (tier.name, module)


def test_composition_by_concatenation_equals_peft_with_all_tiers_active(
    tiers: list[Tier], tmp_path: Path
) -> None:
    stack = TierStack(tiers)
    model = stack.to_peft(build_model(CFG), trainable="context")
    assert sorted(model.base_model.active_adapters) == sorted(stack.names)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".context." in n for n in trainable)
    stacked = logits(model)
    base = logits(build_model(CFG))
    assert (stacked - base).abs().max() > 1e-2  # the tiers really change the output

    served, report = stack.compose(max_lora_rank=64)
    assert report.exact and report.rank == 4 + 8  # q_proj carries the foundation and agent tiers
    assert {m.rsplit(".", 1)[-1] for m in served} == {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"}
    out = save_adapter(served, tmp_path / "served", r=report.rank, lora_alpha=2 * report.rank)
    composed = PeftModel.from_pretrained(build_model(CFG), str(out))
    diff = (logits(composed) - stacked).abs().max().item()
    print(f"max |logits(composed) - logits(stack)| = {diff:.2e}")
    assert diff < 1e-5


def test_training_step_updates_only_the_fast_tier(tiers: list[Tier]) -> None:
    model = TierStack(tiers).to_peft(build_model(CFG), trainable="context")
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(input_ids=TOKENS, labels=TOKENS).loss
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if "lora_" in n and not torch.equal(p, before[n])}
    assert changed and all(".context." in n for n in changed)
    assert any(".context." in n and "lora_A" in n for n in changed)
    frozen = [n for n in before if ".foundation." in n or ".agent." in n]
    assert frozen and not changed & set(frozen)


def test_truncated_composition_reports_its_error(tiers: list[Tier], tmp_path: Path) -> None:
    deltas = TierStack(tiers).deltas()
    served, report = compose(deltas, max_lora_rank=4)
    assert not report.exact and report.rank == 4 and report.error > 0
    assert tier_distance(served, tier_add(deltas)) == pytest.approx(report.error, rel=1e-3)
    reloaded, meta = load_adapter(save_adapter(served, tmp_path / "small", r=8))
    assert meta.r == 8 and tier_distance(reloaded, served) < 1e-5


def test_saved_adapter_is_valid_for_vllm(tiers: list[Tier], tmp_path: Path) -> None:
    from vllm.lora.peft_helper import PEFTHelper

    served, _report = TierStack(tiers).compose(max_lora_rank=64)
    out = save_adapter(served, tmp_path / "served", r=16, lora_alpha=32)
    helper = PEFTHelper.from_local_dir(str(out), max_position_embeddings=None)
    assert helper.r == 16 and helper.vllm_lora_scaling_factor == pytest.approx(2.0)
    assert helper._validate_features() == []
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["bias"] == "none" and cfg["rank_pattern"] == {}


def test_bad_adapter_dirs_give_clear_errors(tiers: list[Tier], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="adapter config"):
        load_adapter(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"r": 4,\n "lora_alpha": }')
    with pytest.raises(ValueError, match="line 2"):
        load_adapter(broken)
    dora = tmp_path / "dora"
    dora.mkdir()
    cfg = json.loads((tiers[0].path / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        load_adapter(dora)
    delta, _ = load_adapter(tiers[1].path)
    with pytest.raises(ValueError, match="truncate first"):
        save_adapter(delta, tmp_path / "too-small", r=4)
    with pytest.raises(ValueError, match="do not cover"):
        save_adapter(delta, tmp_path / "narrow", target_modules=["q_proj"])
