"""Benchmark: data-parallel training throughput, 1 process vs 2 (DDP and FSDP), through the product's entrypoint.

Each run is ``torchrun --standalone --nproc-per-node N -m dynamiclora.cli train ...`` (the command the
operator's distributed training Jobs run, with the c10d rendezvous local) on the tiny Llama of
``dynamiclora_dev.tinymodel`` and generated records, with the same global batch and steps. Throughput is
training examples per second of the training loop (steps x global batch / the loop's own duration, as
the run reports it in ``stats.json``), so model loading and the publication are left out. Both runs are
in the same invocation; the ratio is what to read. This machine has 2 cores shared by both processes,
so the ratio is bounded by them: on one core per process and a model this small, communication (an
all-reduce of the LoRA gradients per step) is a large share of each step. The FSDP run (``--strategy
fsdp``) also all-gathers every layer's parameters, base model included, in each forward and backward pass
and reduce-scatters the gradients: it pays that to hold half the parameters per process (``heldShare``).

Run: ``python bench/distributed.py [--steps 100] [--batch-size 16] [--out bench/results/distributed.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dynamiclora.storage import open_store
from dynamiclora_dev.tinymodel import TinyModelConfig, ensure_tiny_model, generated_words

NS, TIER = "bench", "ctx"


def _records(path: Path, n: int) -> Path:
    words = generated_words(TinyModelConfig())
    lines = [json.dumps({"agent": "a", "timestamp": f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}Z", "id": f"r{i}",
                         "prompt": f"what color likes {words[i % 50]} ?", "response": f"{words[50 + i % 3]} ."})
             for i in range(n)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def run(nproc: int, model: Path, data: Path, root: Path, steps: int, batch: int,
        strategy: str = "ddp") -> dict[str, Any]:  # fmt: skip
    store = f"file://{root}/store-{nproc}-{strategy}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m",
           "dynamiclora.cli", "train", "--base-model", str(model), "--data", str(data), "--output-store", store,
           "--namespace", NS, "--tier", TIER, "--steps", str(steps), "--batch-size", str(batch), "--lr", "0.005",
           "--rank", "8", "--threads", "1", "--checkpoint-every", str(steps), "--strategy", strategy]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if done.returncode != 0:
        raise RuntimeError(f"{nproc} process(es) failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    stats = json.loads(open_store(store).read_file(NS, TIER, 1, "stats.json"))
    loop = float(stats["durationSeconds"])
    sharding = stats.get("sharding")  # rank 0's share, recorded by an fsdp run
    held = round(sharding["heldElements"] / sharding["elements"], 3) if sharding else 1.0
    return {"processes": nproc, "strategy": strategy, "heldShare": held,
            "steps": steps, "globalBatch": batch, "loopSeconds": loop,
            "wallSeconds": round(time.monotonic() - started, 3), "examplesPerSecond": round(steps * batch / loop, 2),
            "finalLoss": stats.get("finalLoss")}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default="bench/results/distributed.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dl-bench-dist-") as tmp:
        root = Path(tmp)
        model = ensure_tiny_model(root / "model")
        data = _records(root / "records.jsonl", 256)
        runs = [run(n, model, data, root, args.steps, args.batch_size, s) for n, s in ((1, "ddp"), (2, "ddp"),
                                                                                      (2, "fsdp"))]  # fmt: skip
    rate = [r["examplesPerSecond"] for r in runs]
    doc = {"runs": runs, "speedup": round(rate[1] / rate[0], 3), "fsdpSpeedup": round(rate[2] / rate[0], 3),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
           "note": "2 processes on 2 shared cores; the ratio is bounded by them"}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
