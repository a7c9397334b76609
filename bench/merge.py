"""Benchmark: merging LoRA adapters in low-rank form vs PEFT's dense SVD merge.

For d = 1024, 2048, 4096: a model of 8 ``d x d`` linear modules carries two rank-16 LoRA adapters
(a fast tier and a slow tier). Both methods produce one rank-16 adapter equal to the best rank-16
approximation of their sum:

* ours: :func:`dynamiclora.memory.compose` (factor concatenation, QR, ``32 x 32`` SVD, truncation);
* PEFT: ``add_weighted_adapter(combination_type="svd", svd_rank=16)``, which forms every dense
  ``d x d`` delta and decomposes it.

Each is timed in the same run (wall time; ours is the median of several repetitions, PEFT's of fewer
because one run takes seconds to minutes). PEFT's dense SVDs dominate the run time; when the time
budget (``--budget``) cannot fit all 8 at a size, PEFT is timed on the first n modules (same weights)
and the comparison is per module (PEFT handles modules one after another, independently); the JSON
records n. Each result's relative error is measured against the
exact truncated SVD of the dense sum. The reference is computed independently of both methods: a
float64 SVD of the dense sum restricted to its range, found from the dense matrix alone by a
Gaussian sketch ``X Ω`` with 64 columns (exact because ``rank X <= 32``); at d <= 2048 a full dense
float64 ``torch.linalg.svd`` cross-checks that reference.

Run: ``make bench-merge`` or ``python bench/merge.py [--sizes 1024 2048 4096] [--out bench/results/merge.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from dynamiclora.memory import LowRankDelta, TierDelta, compose

RANK = 16
MODULES = 8


class Stack(nn.Module):
    """``MODULES`` independent square linear layers (the targets of the adapters)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(MODULES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum((layer(x) for layer in self.layers), torch.zeros_like(x))


def build(d: int, seed: int, modules: int = MODULES) -> Any:
    """PEFT model with adapters ``fast`` and ``slow`` (rank 16, random non-zero A and B)."""
    torch.manual_seed(seed)
    base = Stack(d)
    targets = [f"layers.{i}" for i in range(modules)]
    model = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=32, target_modules=targets,
                                            init_lora_weights=False), adapter_name="fast")
    model.add_adapter("slow", LoraConfig(r=RANK, lora_alpha=16, target_modules=targets, init_lora_weights=False))
    return model


def copy_adapters(src: Any, dst: Any, modules: int) -> None:
    """Give ``dst``'s first ``modules`` LoRA layers exactly ``src``'s weights."""
    with torch.no_grad():
        for i in range(modules):
            a, b = src.base_model.model.layers[i], dst.base_model.model.layers[i]
            for name in ("fast", "slow"):
                b.lora_A[name].weight.copy_(a.lora_A[name].weight)
                b.lora_B[name].weight.copy_(a.lora_B[name].weight)


def tier_of(model: Any, adapter: str) -> TierDelta:
    """The adapter's per-module low-rank delta (scaling folded into B), read from the PEFT layers."""
    out: TierDelta = {}
    for i, layer in enumerate(model.base_model.model.layers):
        B = layer.lora_B[adapter].weight.detach() * layer.scaling[adapter]
        out[f"layers.{i}"] = LowRankDelta(B.clone(), layer.lora_A[adapter].weight.detach().clone())
    return out


def reference(dense: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Exact rank-``k`` truncated SVD of a dense matrix of rank <= 64, in float64, from the dense matrix."""
    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(dense.shape[1], 64, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(dense @ omega)
    u, s, vh = torch.linalg.svd(q.T @ dense, full_matrices=False)
    out: torch.Tensor = (q @ u[:, :k]) * s[:k] @ vh[:k]
    return out


def timed(fn: Any, reps: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def svd_probe(d: int) -> float:
    """Seconds for one dense d x d SVD as PEFT runs it (to size the PEFT measurement to the budget)."""
    x = torch.randn(d, 2 * RANK) @ torch.randn(2 * RANK, d)
    t0 = time.perf_counter()
    torch.linalg.svd(x, full_matrices=False)
    return time.perf_counter() - t0


def run_size(d: int, peft_modules: int, peft_reps: int, our_reps: int) -> dict[str, Any]:
    model = build(d, seed=d)
    fast, slow = tier_of(model, "fast"), tier_of(model, "slow")

    # Ours runs single-threaded: its O(d r^2) work is too small to gain from threads, and on a shared
    # machine idle-spinning OpenMP threads only add noise. PEFT keeps all threads for its dense SVDs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours_s, (ours, _) = timed(lambda: compose([fast, slow], max_lora_rank=RANK), our_reps)
    finally:
        torch.set_num_threads(threads)

    # PEFT merges every target module of the adapters in one call; when the budget does not allow
    # all 8 dense SVDs at this size, a model whose adapters target the first `peft_modules` modules
    # (same weights) is timed and the per-module times are compared.
    peft_model = model if peft_modules == MODULES else build(d, seed=d, modules=peft_modules)
    if peft_model is not model:
        copy_adapters(model, peft_model, peft_modules)

    def peft_merge() -> None:
        if "merged" in peft_model.peft_config:
            peft_model.delete_adapter("merged")
        # svd_full_matrices=False is PEFT's faster setting (default True): the comparison favours PEFT.
        peft_model.add_weighted_adapter(["fast", "slow"], [1.0, 1.0], "merged", combination_type="svd",
                                        svd_rank=RANK, svd_full_matrices=False)

    peft_s, _ = timed(peft_merge, peft_reps)

    num_ours = num_peft = den_ours = den_peft = 0.0
    crosscheck = None
    for i in range(MODULES):
        name = f"layers.{i}"
        dense = (fast[name].dense() + slow[name].dense()).to(torch.float64)
        ref = reference(dense, RANK, seed=i)
        if d <= 1024 and i == 0:
            u, s, vh = torch.linalg.svd(dense, full_matrices=False)
            full = (u[:, :RANK] * s[:RANK]) @ vh[:RANK]
            crosscheck = float((full - ref).norm() / full.norm())
        ref_sq = float(ref.norm() ** 2)
        num_ours += float((ours[name].dense().to(torch.float64) - ref).norm() ** 2)
        den_ours += ref_sq
        if i < peft_modules:
            peft_dense = peft_model.base_model.model.layers[i].get_delta_weight("merged").detach()
            num_peft += float((peft_dense.to(torch.float64) - ref).norm() ** 2)
            den_peft += ref_sq
    per_module_ours = ours_s / MODULES
    per_module_peft = peft_s / peft_modules
    result: dict[str, Any] = {
        "speedup_vs_peft": per_module_peft / per_module_ours,
        "rel_error": (num_ours / den_ours) ** 0.5,
        "peft_rel_error": (num_peft / den_peft) ** 0.5,
        "ours_seconds_8_modules": ours_s,
        "peft_seconds_8_modules": per_module_peft * MODULES,
        "peft_modules_timed": peft_modules,
        "peft_seconds_measured": peft_s,
        "ours_repetitions": our_reps,
        "peft_repetitions": peft_reps,
    }
    if crosscheck is not None:
        result["reference_vs_full_dense_svd_rel"] = crosscheck
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--out", type=Path, default=Path("bench/results/merge.json"))
    parser.add_argument("--our-reps", type=int, default=20)
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds allowed for the PEFT side; fewer modules are timed at large d if needed")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    # Size the PEFT measurement to the time budget from a cubic model of the dense SVD time, refined
    # with each size's measured PEFT time.
    per_module_at = {1024: svd_probe(1024)}
    remaining = args.budget
    weights = {d: (d / min(args.sizes)) ** 1.5 for d in args.sizes}
    for k, d in enumerate(args.sizes):
        ref_d, ref_t = max(per_module_at.items())
        est = ref_t * (d / ref_d) ** 3
        share = weights[d] / sum(weights[x] for x in args.sizes[k:])
        budget_d = max(remaining - (time.perf_counter() - t0), 0.0) * share
        modules = int(max(1, min(MODULES, budget_d // max(est, 1e-9))))
        reps = 3 if est * modules * 3 <= budget_d / 2 else (2 if est * modules * 2 <= budget_d / 2 else 1)
        r = run_size(d, modules, reps, args.our_reps)
        results[f"d{d}"] = r
        per_module_at[d] = r["peft_seconds_measured"] / modules
        print(f"d={d}: ours {r['ours_seconds_8_modules'] * 1e3:.2f} ms / 8 modules, PEFT "
              f"{r['peft_seconds_8_modules']:.2f} s / 8 modules ({modules} timed), speedup "
              f"{r['speedup_vs_peft']:.0f}x, rel error ours {r['rel_error']:.2e} PEFT {r['peft_rel_error']:.2e}",
              flush=True)
    results["meta"] = {
        "rank": RANK, "modules": MODULES, "adapters_merged": 2, "torch": torch.__version__,
        "threads_peft": torch.get_num_threads(), "threads_ours": 1, "machine": platform.machine(),
        "total_seconds": time.perf_counter() - t0,
        "load_average_1m": os.getloadavg()[0],
        "command": "python bench/merge.py --sizes " + " ".join(map(str, args.sizes)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
