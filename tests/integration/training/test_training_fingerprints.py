"""A compose Job fingerprints its whole batch with one load of the base model: each fingerprint must be the
one the adapter gets alone, or the hot-swap would refuse (or, worse, accept) the wrong bytes."""

from __future__ import annotations

from pathlib import Path

from dynamiclora.serving.adapters import Fingerprint
from dynamiclora.training.fingerprint import (
    compute_fingerprint,
    greedy_with_margin,
    make_random_adapter,
    probes,
    write_fingerprints,
)


def test_batched_fingerprints_equal_each_adapter_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapters = [make_random_adapter(tiny_model_dir, tmp_path / f"a{seed}", rank=4, seed=seed, fingerprint=False)
                for seed in (1, 2, 3)]  # fmt: skip
    batched = write_fingerprints(tiny_model_dir, adapters)
    alone = [compute_fingerprint(tiny_model_dir, a) for a in adapters]
    assert batched == alone
    assert [Fingerprint.read(a) for a in adapters] == alone  # written beside each adapter
    assert len({fp.token_ids for fp in alone}) == 3  # the three adapters answer differently: the check can fail


def test_the_fingerprint_is_the_most_decisive_probe(tiny_model_dir: Path, tmp_path: Path) -> None:
    """vLLM adds and multiplies in another order than PEFT: a continuation that hangs on a near-tie between
    two tokens can flip, and a correct adapter then fails verification. The probe chosen has the largest
    smallest logit gap of all the probes tried (the e2e once saw a pinned adapter answer otherwise)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_random_adapter(tiny_model_dir, tmp_path / "a", rank=4, seed=7, fingerprint=False)
    fp = compute_fingerprint(tiny_model_dir, adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(adapter)).eval()
    gaps = {p: greedy_with_margin(model, p, 8)[1] for p in probes(int(model.config.vocab_size))}
    assert len(set(gaps.values())) > 1  # the probes differ: the choice matters
    assert gaps[fp.prompt_token_ids] == max(gaps.values())
    assert fp.token_ids == greedy_with_margin(model, fp.prompt_token_ids, 8)[0]
