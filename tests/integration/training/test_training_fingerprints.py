"""A compose Job fingerprints its whole batch with one load of the base model: each fingerprint must be the
one the adapter gets alone, or the hot-swap would refuse (or, worse, accept) the wrong bytes."""

from __future__ import annotations

from pathlib import Path

from dynamiclora.serving.adapters import Fingerprint
from dynamiclora.training.fingerprint import compute_fingerprint, make_random_adapter, write_fingerprints


def test_batched_fingerprints_equal_each_adapter_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapters = [make_random_adapter(tiny_model_dir, tmp_path / f"a{seed}", rank=4, seed=seed, fingerprint=False)
                for seed in (1, 2, 3)]  # fmt: skip
    batched = write_fingerprints(tiny_model_dir, adapters)
    alone = [compute_fingerprint(tiny_model_dir, a) for a in adapters]
    assert batched == alone
    assert [Fingerprint.read(a) for a in adapters] == alone  # written beside each adapter
    assert len({fp.token_ids for fp in alone}) == 3  # the three adapters answer differently: the check can fail
