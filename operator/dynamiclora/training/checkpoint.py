"""Resumable training checkpoints in a work directory.

``<work>/ckpt-000020/state.pt`` holds everything a killed run needs to continue bit-for-bit: the
target adapter's parameters, the optimizer state, the torch RNG state, the step (which fixes the data
position, see :func:`dynamiclora.training.data.batch_indices`), the loss curve so far and the run
fingerprint. A checkpoint is written to a temporary directory, fsynced, then renamed, so a kill at
any moment leaves either the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

_CKPT_RE = re.compile(r"^ckpt-(\d{6,})$")
STATE = "state.pt"


class ResumeMismatchError(ValueError):
    """The work directory belongs to a different run (other data or settings)."""


def save_checkpoint(work_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Atomically write ``state`` as the checkpoint of ``step`` and prune older ones."""
    final = work_dir / f"ckpt-{step:06d}"
    tmp = work_dir / f".ckpt-{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with (tmp / STATE).open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # the same step checkpointed by an earlier attempt: identical by determinism
        shutil.rmtree(final)
    os.rename(tmp, final)
    fd = os.open(work_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in list_checkpoints(work_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(work_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporaries of killed writes are ignored)."""
    if not work_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in work_dir.iterdir()
             if (m := _CKPT_RE.match(p.name)) and (p / STATE).is_file()]
    return [p for _, p in sorted(found)]


def load_latest(work_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The newest checkpoint's state, or ``None``; refuses a checkpoint of a different run."""
    ckpts = list_checkpoints(work_dir)
    if not ckpts:
        return None
    state: dict[str, Any] = torch.load(ckpts[-1] / STATE, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        raise ResumeMismatchError(
            f"{ckpts[-1]} was written by a run with other data or settings; use an empty --work-dir "
            "or the original options"
        )
    return state


def clean_temporaries(work_dir: Path) -> None:
    """Remove half-written checkpoint directories left by a killed run."""
    if work_dir.is_dir():
        for p in work_dir.glob(".ckpt-*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
