"""Freshness of a version no Job of the operator's published: from "published into the store" to "verified
served on every pod that holds the agent", with the store feed against the resync alone, in one run.

A version can come from outside the operator: an import with the checkpoint-store API, a restore, a trainer
of another cluster writing to the same bucket. The operator finds it through the store's feed
(``controllers/store_feed.py``, every ``--feed-seconds``) or, with the feed off (``--feed-seconds 0``), on
its resync (``resync_seconds``, 10 s by default). Both are measured here on the same scenario as
``bench/freshness.py``: a Swarm of three real vLLM CPU pods and one agent placed on all of them; each round
publishes a random rank-8 PEFT adapter as the next version of the agent's context tier with the store API
(no training Job, so no stack is composed ahead: a compose Job composes it, as for any import), then times
until the agent's serving entry names that version served on every pod it is placed on. The operator is
``dynamiclora run`` from the image's environment, each mode with a cluster of its own.

    python bench/freshness_import.py --rounds 10 --out bench/results/freshness_import.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dynamiclora.storage.uri import open_store
from dynamiclora.training.fingerprint import make_random_adapter
from dynamiclora_dev.demo.scenario import DemoConfig
from dynamiclora_dev.localcluster.cluster import LocalCluster
from dynamiclora_dev.localcluster.controlplane import ClusterConfig
from freshness import AGENT, PODS, RESYNC, Clock, FreshnessScenario, percentile

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
FEED_SECONDS = 1.0  # the operator's default


class ImportScenario(FreshnessScenario):
    """The freshness scenario with the operator's store feed every ``feed_seconds`` (0: off), without the
    MigrationPolicy: no records are ever written, so there is nothing to migrate (and no regression set for
    its gate: its Jobs would only fail beside the rounds)."""

    feed_seconds = FEED_SECONDS

    def manifests(self) -> list[dict[str, Any]]:
        return [o for o in super().manifests() if o["kind"] != "MigrationPolicy"]

    def operator_argv(self, metrics_port: int) -> list[str]:
        return [*super().operator_argv(metrics_port), "--feed-seconds", str(self.feed_seconds)]


def one_import(sc: ImportScenario, clock: Clock, r: int, timeout: float) -> dict[str, Any]:
    """Publish one version into the store; the seconds until it is served on every pod."""
    src = make_random_adapter(sc.model_dir, sc.cfg.work_dir / f"import-{r}", rank=8, seed=500 + r)
    store = open_store(f"file://{sc.pvc_root}/ckpt/dl")
    ref = store.publish(sc.cfg.namespace, sc.tier_name(AGENT, "context"), {n: src / n for n in ADAPTER_FILES},
                        metadata={"kind": "import", "note": f"freshness_import round {r + 1}"})  # fmt: skip
    published = time.monotonic()
    label = sc.wait(f"import {r + 1}: v{ref.version} served on every pod", lambda: next(
        (lb for lb in clock.served if lb.split(".")[0] == f"c{ref.version}"), None), timeout)  # fmt: skip
    composes = [n for n, t in clock.created.items() if "-compose-" in n and published <= t <= clock.served[label]]
    return {"round": r + 1, "version": ref.version, "label": label,
            "seconds": round(clock.served[label] - published, 3), "compose_jobs": len(composes)}  # fmt: skip


def run_mode(feed_seconds: float, rounds: int, work: Path, timeout: float, pods: int) -> dict[str, Any]:
    cluster = LocalCluster(ClusterConfig(state_dir=work / "cluster")).start()
    try:
        cfg = DemoConfig(work_dir=work, agents=(AGENT,), step_timeout=timeout, resync_seconds=RESYNC)
        scenario = ImportScenario(cfg, cluster)
        scenario.pods, scenario.feed_seconds = pods, feed_seconds
        with scenario.running(pods=pods) as sc:
            sc.wait(f"{pods} vLLM pods ready", lambda: sc.status("swarms", sc.cfg.swarm).get("readyReplicas") == pods
                    or None)  # fmt: skip
            with Clock(sc) as clock:
                results = []
                for r in range(rounds):
                    results.append(one_import(sc, clock, r, timeout))
                    print(json.dumps({"feedSeconds": feed_seconds, **results[-1]}), flush=True)
    finally:
        cluster.stop()
    secs = [x["seconds"] for x in results]
    return {"feed_seconds": feed_seconds, "resync_seconds": RESYNC, "rounds": rounds,
            "p50_s": round(statistics.median(secs), 3), "p99_s": round(percentile(secs, 99), 3),
            "max_s": max(secs), "per_round": results}  # fmt: skip


def run(rounds: int, work: Path, timeout: float, pods: int = PODS) -> dict[str, Any]:
    feed = run_mode(FEED_SECONDS, rounds, work / "feed", timeout, pods)
    resync = run_mode(0.0, rounds, work / "resync", timeout, pods)
    return {"pods": pods, "feed": feed, "resync_only": resync,
            "p50_ratio_feed_to_resync": round(feed["p50_s"] / resync["p50_s"], 3),
            "p99_ratio_feed_to_resync": round(feed["p99_s"] / resync["p99_s"], 3),
            "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="imports per mode")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed per step")
    ap.add_argument("--pods", type=int, default=PODS, help="vLLM pods (about 3 GB of memory each)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/freshness_import.json"), help="results file")
    ap.add_argument("--work", type=Path, help="keep the clusters' state and logs here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.work:
        result = run(args.rounds, args.work, args.timeout, args.pods)
    else:
        with tempfile.TemporaryDirectory(prefix="dynamiclora-freshness-import-") as tmp:
            result = run(args.rounds, Path(tmp), args.timeout, args.pods)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}: with the feed p50 {result['feed']['p50_s']} s, p99 {result['feed']['p99_s']} s; "
          f"resync only p50 {result['resync_only']['p50_s']} s, p99 {result['resync_only']['p99_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
