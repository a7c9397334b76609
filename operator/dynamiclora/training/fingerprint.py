"""Offline reference outputs computed with PEFT, used to prove which adapter version vLLM serves.

The trainer (or a test, or the benchmark) writes ``dynamiclora-fingerprint.json`` beside a new adapter
version: the greedy continuation of a probe prompt by base model + adapter. The hot-swap path compares it
with what vLLM answers under the stable name. Heavy imports (torch, peft) stay inside the functions so
that the operator process does not load them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynamiclora.serving.adapters import Fingerprint

LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_PROBE = (1, 40, 41, 45, 36, 13, 11)  # BOS (id 1 in the tiny vocabulary) + arbitrary word ids
PROBES = 8  # probe prompts tried; the most decisive one is the fingerprint


def _load_base(base_model_dir: str | Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
    model.eval()  # type: ignore[no-untyped-call]
    return model


def greedy_tokens(model: Any, prompt_token_ids: Sequence[int], max_new_tokens: int) -> tuple[int, ...]:
    """Greedy continuation with no EOS stop (matches vLLM's ``temperature=0, ignore_eos=true``)."""
    return greedy_with_margin(model, prompt_token_ids, max_new_tokens)[0]


def greedy_with_margin(
    model: Any, prompt_token_ids: Sequence[int], max_new_tokens: int
) -> tuple[tuple[int, ...], float]:
    """The greedy continuation and its smallest top-1 over top-2 logit gap."""
    import torch

    ids = torch.tensor([list(prompt_token_ids)], dtype=torch.long)
    out: list[int] = []
    margin = float("inf")
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids).logits[0, -1]
            top = torch.topk(logits.float(), 2).values
            margin = min(margin, float(top[0] - top[1]))
            nxt = int(torch.argmax(logits).item())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]], dtype=torch.long)], dim=1)
    return tuple(out), margin


def probes(vocab_size: int, n: int = PROBES) -> list[tuple[int, ...]]:
    """``DEFAULT_PROBE`` and ``n - 1`` more seeded probe prompts of the same length over the vocabulary."""
    words = range(3, max(min(vocab_size, 4096), 4))  # ids 0-2: pad/bos/eos-like specials in small vocabularies
    out: list[tuple[int, ...]] = [DEFAULT_PROBE]
    for i in range(1, n):
        rng = random.Random(i)
        out.append((DEFAULT_PROBE[0], *(rng.choice(words) for _ in DEFAULT_PROBE[1:])))
    return out


def decisive(model: Any, candidates: Sequence[Sequence[int]], max_new_tokens: int) -> Fingerprint:
    """The fingerprint of the probe whose greedy continuation is the most decisive (largest smallest logit
    gap). vLLM computes in another order (batching, kernels) than PEFT does: a probe whose continuation
    hangs on a near-tie would make a correct adapter fail verification now and then."""
    best: tuple[float, Fingerprint] | None = None
    for prompt in candidates:
        tokens, margin = greedy_with_margin(model, prompt, max_new_tokens)
        if best is None or margin > best[0]:
            best = (margin, Fingerprint(tuple(prompt), tokens))
    assert best is not None, "no probe prompt"
    return best[1]


def compute_fingerprint(
    base_model_dir: str | Path,
    adapter_dir: str | Path | None,
    prompt_token_ids: Sequence[int] | None = None,
    max_new_tokens: int = 8,
) -> Fingerprint:
    """Greedy output of ``base_model_dir`` with the PEFT adapter (or the bare base when None), on
    ``prompt_token_ids`` or else on the most decisive of :func:`probes`."""
    model = _load_base(base_model_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
        model.eval()
    return decisive(model, _candidates(model, prompt_token_ids), max_new_tokens)


def _candidates(model: Any, prompt_token_ids: Sequence[int] | None) -> list[tuple[int, ...]]:
    if prompt_token_ids is not None:
        return [tuple(prompt_token_ids)]
    return probes(int(model.config.vocab_size))


def write_fingerprints(
    base_model_dir: str | Path,
    adapter_dirs: Sequence[str | Path],
    prompt_token_ids: Sequence[int] | None = None,
    max_new_tokens: int = 8,
) -> list[Fingerprint]:
    """Compute each adapter's fingerprint and store it beside the adapter, loading the base model once.

    This is what a compose Job does for its batch: each adapter is loaded beside the previous one, made the
    only active one, and the previous one is then deleted, so the base weights are never copied (which
    matters for a real base model). Each result equals :func:`compute_fingerprint` of that adapter alone.
    """
    from peft import PeftModel

    base = _load_base(base_model_dir)
    candidates = _candidates(base, prompt_token_ids)
    model: Any = None
    out: list[Fingerprint] = []
    for i, adapter_dir in enumerate(adapter_dirs):
        name = f"fingerprint{i}"
        if model is None:
            model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=name)
        else:
            model.load_adapter(str(adapter_dir), adapter_name=name)
            model.set_adapter(name)
            model.delete_adapter(f"fingerprint{i - 1}")
        model.eval()
        fp = decisive(model, candidates, max_new_tokens)
        fp.write(adapter_dir)
        out.append(fp)
    return out


def make_random_adapter(
    base_model_dir: str | Path,
    out_dir: str | Path,
    *,
    rank: int = 8,
    seed: int = 0,
    std: float = 0.3,
    fingerprint: bool = True,
) -> Path:
    """Save a LoRA adapter with random, non-trivial weights (tests, benchmark, demo).

    PEFT initialises ``lora_B`` to zero, which would make every version identical to the base model;
    here both factors are drawn from a seeded normal so that each seed serves a different output.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    model = _load_base(base_model_dir)
    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LLAMA_LORA_TARGETS), lora_dropout=0.0)
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    out = Path(out_dir)
    peft_model.save_pretrained(str(out))
    if fingerprint:
        peft_model.eval()
        # One probe for every seed: tests compare versions' answers to the same prompt under load.
        Fingerprint(DEFAULT_PROBE, greedy_tokens(peft_model, DEFAULT_PROBE, 8)).write(out)
    return out
