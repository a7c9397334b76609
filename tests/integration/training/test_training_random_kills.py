"""Jobs SIGKILLed at random points (issue 18, the fault-injection suite).

Each Job runs as its own process, as in its container, and is killed with SIGKILL right after a line of
its output chosen at random (seeded; the seed and the points are printed): a training step, a checkpoint,
or any step of the store's write path (claim, each upload, the manifest). Then it is retried, as the Job
controller retries a pod, until an attempt completes. Whatever the points, exactly one version is
published and it is the one an uninterrupted run publishes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training_train import NS, TIER, train_args
from trainhelpers import result_of, run_cli

from dynamiclora.memory import LowRankDelta, TierDelta, load_adapter, save_adapter
from dynamiclora.storage import open_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KILLS = 3
MOD = "model.layers.0.self_attn.q_proj"
D = 64


def _lines(cmd: list[str]) -> list[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    return done.stdout.splitlines()


def _env() -> dict[str, str]:
    # Every attempt is a pod of the same Job: the operator names it in the environment.
    return dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", DYNAMICLORA_JOB="ctx-migrate-1")


def _kill_after_line(cmd: list[str], index: int) -> bool:
    """Run ``cmd`` and SIGKILL it right after its ``index``-th output line; False if it finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env())
    assert proc.stdout is not None
    try:
        for i, _line in enumerate(proc.stdout):
            if i == index:
                proc.send_signal(signal.SIGKILL)
                break
        return proc.wait(timeout=600) == -signal.SIGKILL
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()


def _kill_points(n_lines: int) -> tuple[int, list[int]]:
    seed = int(time.time())
    points = sorted(random.Random(seed).sample(range(n_lines - 1), KILLS))
    print(f"seed {seed}: SIGKILL after output lines {points} of {n_lines}")
    return seed, points


def test_a_training_job_killed_at_random_points_publishes_once_and_exactly(
    tiny_model_dir: Path, records_file: Path, tmp_path: Path
) -> None:
    roomy = f"file://{tmp_path}/reference"
    reference = _lines([sys.executable, "-m", "dynamiclora.cli",
                        *train_args(tiny_model_dir, records_file, roomy, tmp_path / "w0")])  # fmt: skip
    store = f"file://{tmp_path}/store"
    args = ("--work-store", f"{store}/_work/{NS}/{TIER}/v000001")
    seed, points = _kill_points(len(reference))
    for attempt, point in enumerate(points):
        # Every retry is a new pod: an empty work directory; what survives is in the store.
        cmd = [sys.executable, "-m", "dynamiclora.cli",
               *train_args(tiny_model_dir, records_file, store, tmp_path / f"pod{attempt}", *args)]  # fmt: skip
        _kill_after_line(cmd, point)
        assert len(open_store(store).list_versions(NS, TIER)) <= 1, (seed, points)
    final = run_cli(*train_args(tiny_model_dir, records_file, store, tmp_path / "last", *args))
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr
    # One version (numbered 2 when a killed attempt held the claim on 1: an unfinished write, never a version).
    (version,) = open_store(store).list_versions(NS, TIER)
    assert result_of(final)["version"] == version, (seed, points)
    got, want = _weights(store, version, tmp_path / "got"), _weights(roomy, 1, tmp_path / "want")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got), (seed, points)


def _weights(store_uri: str, version: int, dest: Path) -> dict[str, torch.Tensor]:
    open_store(store_uri).download(NS, TIER, version, dest)
    return load_file(str(dest / "adapter_model.safetensors"))


def _publish(store_uri: str, tier: str, delta: TierDelta, tmp: Path) -> None:
    directory = save_adapter(delta, tmp, base_model_name_or_path="tiny")
    open_store(store_uri).publish("ns", tier, {p.name: p for p in directory.iterdir()})


def _source_versions(store_uri: str) -> None:
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(D, 1, generator=gen), torch.randn(D, 1, generator=gen)
    u, v = u / u.norm(), v / v.norm()
    for i in range(3):  # the same strong direction in every version, plus fresh noise: it migrates
        b, a = torch.randn(D, 2, generator=gen) * 0.02, torch.randn(2, D, generator=gen) * 0.02
        _publish(store_uri, "ctx", {MOD: LowRankDelta(torch.cat([u * 2.0, b], 1), torch.cat([v.T, a], 0))},
                 Path(store_uri.removeprefix("file://")).parent / f"src{i}")  # fmt: skip


def _dense(store_uri: str, tier: str, version: int, dest: Path) -> torch.Tensor:
    open_store(store_uri).download("ns", tier, version, dest)
    delta = load_adapter(dest)[0]
    return delta[MOD].dense() if MOD in delta else torch.zeros(D, D)


def test_a_consolidation_job_killed_at_random_points_moves_each_component_once(tmp_path: Path) -> None:
    def cmd(store: str) -> list[str]:
        return [sys.executable, "-m", "dynamiclora.cli", "consolidate", "--mode", "migrate", "--source",
                f"{store}/ns/ctx", "--dest", f"{store}/ns/agent", "--max-energy-fraction", "1.0"]  # fmt: skip

    reference = f"file://{tmp_path}/reference/store"
    _source_versions(reference)
    lines = _lines(cmd(reference))
    assert sum(line.startswith("published ") for line in lines) == 2  # destination, then the residual
    store = f"file://{tmp_path}/killed/store"
    _source_versions(store)
    seed, points = _kill_points(len(lines))
    for point in points:
        _kill_after_line(cmd(store), point)
    _lines(cmd(store))  # the attempt that completes
    again = _lines(cmd(store))  # a pod killed after its last write is retried: it publishes nothing
    assert not any(line.startswith("published ") for line in again), (seed, points, again)
    assert any("already published this step" in line for line in again)
    s = open_store(store)
    # One destination version and one residual (numbered higher when a killed attempt held a claim).
    (dest,), (*inputs, residual) = s.list_versions("ns", "agent"), s.list_versions("ns", "ctx")
    assert inputs == [1, 2, 3] and residual > 3, (seed, points)
    assert s.get("ns", "ctx", residual).manifest.metadata["kind"] == "migration-source"
    for tier, version, ref_version in (("agent", dest, 1), ("ctx", residual, 4)):
        torch.testing.assert_close(_dense(store, tier, version, tmp_path / f"k-{tier}"),
                                   _dense(reference, tier, ref_version, tmp_path / f"r-{tier}"))  # fmt: skip
