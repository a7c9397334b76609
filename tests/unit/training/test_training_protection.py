"""Protection: the constrained LoRA A rows end up orthogonal to the slower tiers' input directions."""

from __future__ import annotations

from pathlib import Path

import torch

from dynamiclora.memory import LowRankDelta, save_adapter
from dynamiclora.training.protection import protection

MODULE = "model.layers.0.self_attn.q_proj"
PARAM = f"base_model.model.{MODULE}.lora_A.target.weight"


def _slow(tmp: Path) -> Path:
    gen = torch.Generator().manual_seed(0)
    delta = LowRankDelta(torch.randn(32, 3, generator=gen), torch.randn(3, 32, generator=gen))
    return save_adapter({MODULE: delta}, tmp / "slow", r=4, target_modules=["q_proj"])


def test_constrained_rows_are_projected_and_plastic_rows_are_not(tmp_path: Path) -> None:
    a = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    params = {PARAM: a.clone(), "base_model.model.x.lora_B.target.weight": torch.zeros(32, 4)}
    protect = protection([_slow(tmp_path)], params, rank=4, plastic=1)
    assert protect is not None and protect.summary() == {"modules": 1, "protectedDirections": 3,
                                                         "constrainedRows": 3}
    protect.apply(params)
    v = protect.bases[PARAM]
    assert float((params[PARAM][:3] @ v).abs().max()) < 1e-5  # no response on the protected inputs
    assert torch.equal(params[PARAM][3], a[3])  # the plastic row is untouched
    assert float((a[:3] @ v).abs().max()) > 0.1  # it was not orthogonal before


def test_nothing_to_protect(tmp_path: Path) -> None:
    params = {PARAM: torch.ones(4, 32)}
    assert protection([], params, rank=4, plastic=1) is None  # no slower tier
    assert protection([_slow(tmp_path)], params, rank=4, plastic=4) is None  # every row plastic
    other = {"base_model.model.model.layers.1.mlp.up_proj.lora_A.target.weight": torch.ones(4, 32)}
    assert protection([_slow(tmp_path)], other, rank=4, plastic=1) is None  # the slow tier adapts other modules
