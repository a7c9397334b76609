"""A full volume under a training Job (issue 18, the fault-injection suite).

The store lives on a real, small tmpfs (the PVC that fills up): the kernel refuses the write with
ENOSPC, exactly as on a full ReadWriteMany volume. Nothing here fakes the fault; the volume is filled
with a ballast file so that one mirrored checkpoint fits and the next does not.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training_train import NS, TIER, train_args
from trainhelpers import result_of, run_cli

from dynamiclora.storage import open_store

pytestmark = [pytest.mark.integration]
PAGE = 4096


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (the machine's CI runs as root, which may mount)."""
    vol = tmp_path / "vol"
    vol.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(vol)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield vol
    finally:
        subprocess.run(["umount", "-l", str(vol)], check=True)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _pages(size: int) -> int:
    return -(-size // PAGE)


def _adapter(store_uri: str, version: int, dest: Path) -> dict[str, torch.Tensor]:
    open_store(store_uri).download(NS, TIER, version, dest)
    return load_file(str(dest / "adapter_model.safetensors"))


def test_a_full_volume_fails_the_job_cleanly_and_the_retry_resumes_and_publishes_once(
    tiny_model_dir: Path, records_file: Path, tmp_path: Path, small_volume: Path
) -> None:
    # The same run on a roomy disk: the reference, and the size of one checkpoint.
    roomy = f"file://{tmp_path}/roomy"
    ref = run_cli(*train_args(tiny_model_dir, records_file, roomy, tmp_path / "w0"))
    assert ref.returncode == 0, ref.stderr
    ckpt_size = max(p.stat().st_size for p in (tmp_path / "w0").glob("ckpt-*/state.pt"))

    store = f"file://{small_volume}/store"
    work_store = f"{store}/_work/{NS}/{TIER}/v000001"
    args = ("--work-store", work_store)
    # Room for one mirrored checkpoint and its pointer, not for the next beside it (the old one is
    # deleted only once the new one is complete).
    room = (_pages(ckpt_size) * 3 // 2 + 2) * PAGE
    ballast = small_volume / "ballast"
    ballast.write_bytes(b"\0" * (_free(small_volume) - room))

    full = run_cli(*train_args(tiny_model_dir, records_file, store, tmp_path / "pod1", *args))
    assert full.returncode != 0
    assert "No space left on device" in full.stdout + full.stderr
    assert "step 10/40" in full.stdout and "step 40/40" not in full.stdout  # failed at the second checkpoint
    assert open_store(store).list_versions(NS, TIER) == []  # nothing published, nothing half-published
    area = small_volume / "store" / "_work" / NS / TIER / "v000001"
    assert (area / "LATEST.json").read_text() == '{"checkpoint": "ckpt-000005"}'
    last_good = torch.load(area / "ckpt-000005" / "state.pt", map_location="cpu", weights_only=True)
    assert last_good["step"] == 5  # whole: a truncated file would not load

    ballast.unlink()  # the volume is given room again; the Job's retry is a new pod with an empty work dir
    retry = run_cli(*train_args(tiny_model_dir, records_file, store, tmp_path / "pod2", *args))
    assert retry.returncode == 0, retry.stdout[-2000:] + retry.stderr
    assert "restored checkpoint ckpt-000005" in retry.stdout and "resumed from" in retry.stdout
    assert result_of(retry)["version"] == 1
    assert open_store(store).list_versions(NS, TIER) == [1]
    a, b = _adapter(roomy, 1, tmp_path / "a"), _adapter(store, 1, tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # as if nothing had happened
