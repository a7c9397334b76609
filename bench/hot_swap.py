"""Benchmark: hot-swap latency vs the bare 'load + one completion' sequence on one real vLLM CPU server.

For each of N rounds a new adapter version is already on disk (with its PEFT fingerprint); we time
  * swap: ``HotSwapper.ensure`` (list, in-place load, warm-up + fingerprint verification) until it
    reports the version served, and
  * bare: one ``/v1/load_lora_adapter`` call plus one completion of the same probe (same prompt, same
    8 tokens), under another name, with no listing and no check.
Both run alternately against the same server in the same run, so noise affects both alike.

Usage: python bench/hot_swap.py [--swaps 50] [--out bench/results/hot_swap.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dynamiclora.serving.adapters import AdapterSpec
from dynamiclora.serving.client import ClientConfig, VLLMClient
from dynamiclora.serving.hotswap import HotSwapper
from dynamiclora.serving.launcher import VLLMServer, VLLMServerConfig, free_port
from dynamiclora.training.fingerprint import make_random_adapter
from dynamiclora_dev.tinymodel import save_tiny_model


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100] (with 50 samples, p99 is the maximum)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


async def run(server: VLLMServer, adapters: list[Path], swaps: int) -> dict[str, float]:
    pod = server.target("bench")
    cfg = ClientConfig(api_key=server.config.api_key)
    swap_s: list[float] = []
    bare_s: list[float] = []
    async with HotSwapper(cfg) as sw, VLLMClient(server.base_url, cfg) as bare:
        # Version 0 is served before timing starts; both names then only ever swap in place.
        await sw.ensure(pod, AdapterSpec.from_dir("bench-agent", adapters[0], "0"))
        await bare.load_adapter("bench-bare", str(adapters[0]))
        for i in range(1, swaps + 1):
            t0 = time.perf_counter()  # the version is on disk: reading its metadata is part of the swap
            spec = AdapterSpec.from_dir("bench-agent", adapters[i], str(i))
            res = await sw.ensure(pod, spec)
            swap_s.append(time.perf_counter() - t0)
            assert res.action == "swapped" and res.verified, res

            t0 = time.perf_counter()
            await bare.load_adapter("bench-bare", str(adapters[i]), inplace=True)
            fp = spec.fingerprint
            assert fp is not None
            await bare.complete("bench-bare", fp.prompt_token_ids, max_tokens=len(fp.token_ids))
            bare_s.append(time.perf_counter() - t0)
    out = {
        "swap_p50_s": statistics.median(swap_s),
        "swap_p99_s": percentile(swap_s, 99),
        "bare_p50_s": statistics.median(bare_s),
        "bare_p99_s": percentile(bare_s, 99),
    }
    out["p99_ratio"] = out["swap_p99_s"] / out["bare_p99_s"]
    return {k: round(v, 4) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--swaps", type=int, default=50)
    ap.add_argument("--out", default="bench/results/hot_swap.json")
    ap.add_argument("--workdir", default=None, help="keep model, adapters and server log here")
    args = ap.parse_args(argv)
    if args.swaps < 1:
        ap.error("--swaps must be >= 1")
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dlora-bench-hotswap-"))
    model = save_tiny_model(work / "tiny")
    print(f"building {args.swaps + 1} adapter versions in {work} ...", file=sys.stderr)
    # Distinct paths per version, as the operator's checkpoint store publishes them.
    adapters = [
        make_random_adapter(model, work / f"v{i}", rank=8, seed=1000 + i) for i in range(args.swaps + 1)
    ]
    server = VLLMServer(VLLMServerConfig(model_dir=str(model), port=free_port(), api_key="bench",
                                         log_path=str(work / "vllm.log")))
    print("starting vLLM ...", file=sys.stderr)
    server.start()
    try:
        result = asyncio.run(run(server, adapters, args.swaps))
    finally:
        server.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({**result, "swaps": args.swaps}, indent=2))
    return 0 if result["p99_ratio"] <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
