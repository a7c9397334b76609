"""A tier initialised from a version stored at another LoRA scaling is the same delta (e.g. a migration residual)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from dynamiclora.memory import LowRankDelta, save_adapter
from dynamiclora.training.model import build_stack, lora_config
from dynamiclora_dev.tinymodel import TinyModelConfig, build_model


def test_init_from_a_scaling_1_adapter_keeps_its_delta(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tier = {f"model.layers.{i}.self_attn.{m}": LowRankDelta(torch.randn(128, 8, generator=g) * 0.3,
                                                            torch.randn(8, 128, generator=g) * 0.3)
            for i in range(2) for m in ("q_proj", "v_proj")}  # fmt: skip
    stored = save_adapter(tier, tmp_path / "residual", r=8, target_modules=["q_proj", "v_proj"])  # alpha = r

    base = build_model(TinyModelConfig())
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        reference = copy.deepcopy(base)
        for name, d in tier.items():  # the delta added to the weights by hand: ground truth
            reference.get_submodule(name).weight += d.dense()
        want = reference(input_ids=ids).logits
        # The tier's own config has alpha 16 (scaling 2): loading B unchanged would double the delta.
        stack = build_stack(base, lora_config(8, 16.0, ["q_proj", "v_proj"], 0.0, "tiny"), [], stored)
        stack.eval()
        got = stack(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
