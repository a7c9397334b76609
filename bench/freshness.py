"""Freshness: from "training Job completed" to "new version verified served on every pod that holds the agent".

On the local control plane, a Swarm of three real vLLM CPU pods and one agent placed on all of them
(``placement.replicasPerAgent: 3``), with the demo's MigrationPolicy. Each round teaches the agent new facts
(32 records); the operator's training Job trains, publishes a version and, accepted, composes the served
stack it will be served as (a compose Job does it when the stack differs, e.g. after a migration); the
serving pass hot-swaps it into the three pods, verifying each by its fingerprint. Two watches
on the API server time the round as a client sees it: the moment the training Job's ``Complete`` condition
appears, and the moment the agent's serving entry (its context tier's ``status.serving``) names the new
version served on every pod the agent is placed on (``servedOnPods == len(placedOn)``). Rounds the quality
gate refuses serve nothing and are left out.

The same operator process (``dynamiclora run`` from the image's environment), Jobs and vLLM servers as
the e2e; nothing is re-implemented here. Anchor: a public issue of a leading LoRA controller reports about
41 s for one adapter on 3 pods.

    python bench/freshness.py --rounds 30 --out bench/results/freshness.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dynamiclora.settings import OperatorSettings
from dynamiclora_dev.demo.data import round_facts
from dynamiclora_dev.demo.scenario import GROUP_PATH, DemoConfig, Scenario
from dynamiclora_dev.localcluster.cluster import LocalCluster
from dynamiclora_dev.localcluster.controlplane import ClusterConfig

PODS = 3
AGENT = "alice"
RESYNC = OperatorSettings().resync_seconds


class FreshnessScenario(Scenario):
    """The demo's Swarm and MigrationPolicy on ``pods`` pods, its one agent placed on all of them.

    The policy stays: without migrations the context tier alone fills up after a dozen rounds and the
    quality gate (rightly) refuses every round after that, so nothing new would be served to time.
    """

    pods = PODS
    training: dict[str, Any] = {}  # overrides of the context tier's training spec (replay); set per instance

    def manifests(self) -> list[dict[str, Any]]:
        objs = super().manifests()
        swarm = next(o for o in objs if o["kind"] == "Swarm")
        swarm["spec"]["inference"].update(replicas=self.pods, placement={"replicasPerAgent": self.pods})
        swarm["spec"]["contextTier"].setdefault("training", {}).update(self.training)
        return objs


class Clock:
    """First-seen times (``time.monotonic``) of Job completions and of served labels, from two watches."""

    def __init__(self, sc: Scenario) -> None:
        self.sc, self.stop = sc, threading.Event()
        self.completed: dict[str, float] = {}  # Job name -> when its Complete condition was first seen
        self.created: dict[str, float] = {}  # Job name -> when it was first seen
        self.served: dict[str, float] = {}  # served label -> when first seen on every placed pod
        self.threads = [threading.Thread(target=self._follow, args=(p, f), daemon=True) for p, f in (
            (f"/apis/batch/v1/namespaces/{sc.cfg.namespace}/jobs", self._job),
            (f"{GROUP_PATH}/namespaces/{sc.cfg.namespace}/loratiers", self._tier))]  # fmt: skip

    def __enter__(self) -> Clock:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()

    def _follow(self, path: str, seen: Any) -> None:
        while not self.stop.is_set():  # a watch ends after its timeout; a new one starts with every object
            try:
                for event in self.sc.rest.watch(path, {"timeoutSeconds": "30"}, timeout=40):
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        seen(event["object"], time.monotonic())
            except Exception as exc:  # a dropped watch is re-established
                print(f"watch {path}: {exc}; again", file=sys.stderr)
                time.sleep(0.2)

    def _job(self, job: dict[str, Any], now: float) -> None:
        name = job["metadata"]["name"]
        self.created.setdefault(name, now)
        conditions = (job.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions):
            self.completed.setdefault(name, now)

    def _tier(self, tier: dict[str, Any], now: float) -> None:
        if tier["metadata"]["name"] != self.sc.tier_name(AGENT, "context"):
            return
        a = (tier.get("status") or {}).get("serving") or {}
        if a.get("placedOn") and a.get("servedOnPods") == len(a["placedOn"]):
            self.served.setdefault(str(a.get("servedVersion")), now)


def trained_verdict(sc: Scenario, ctx: str, after: int) -> dict[str, Any] | None:
    """The tier's status once a training version newer than ``after`` has its final verdict. A migration also
    publishes a version of the context tier (what moved up is taken out of it), judged as well: counting it
    as the round's verdict would call the round refused and time the next one on this round's version."""
    st = sc.final_verdict(ctx, after)
    if st is None or not any(int(h["version"]) > after and h.get("source") == "training"
                             and h.get("accepted") is not None for h in st.get("history", [])):  # fmt: skip
        return None
    return st


def one_round(sc: Scenario, clock: Clock, r: int, timeout: float) -> dict[str, Any]:
    """Teach one round; its timings once served, or (``refused``) the gate's last verdict on it."""
    ctx = sc.tier_name(AGENT, "context")
    after = int(sc.status("loratiers", ctx).get("latestVersion") or 0)
    total = sc.teach(AGENT, 1000 + r, round_facts(AGENT, r))
    st = sc.wait(f"round {r + 1}: trained and judged", lambda: trained_verdict(sc, ctx, after), timeout)
    history = [h for h in st.get("history", []) if int(h["version"]) > after and h.get("source") == "training"]
    accepted = [int(h["version"]) for h in history if h.get("accepted")]
    if not accepted:
        gate = st.get("lastGate") or {}
        return {"round": r + 1, "refused": True, "versions": [int(h["version"]) for h in history],
                "heldOutKnown": gate.get("heldOutKnown"), "heldOutForgotten": gate.get("heldOutForgotten"),
                "cause": gate.get("cause")}  # fmt: skip
    v = accepted[-1]
    name = re.compile(rf"{re.escape(ctx)}-train-v{v}(-r\d+)?")  # the attempt that published v
    job = sc.wait(f"round {r + 1}: the completion of v{v}'s Job seen", lambda: next(
        (n for n in clock.completed if name.fullmatch(n)), None), 60)  # fmt: skip
    label = sc.wait(f"round {r + 1}: v{v} served on every pod", lambda: next(
        (lb for lb in clock.served if lb.split(".")[0] == f"c{v}"), None), timeout)  # fmt: skip
    done, served = clock.completed[job], clock.served[label]
    composes = [n for n, t in clock.created.items() if "-compose-" in n and done <= t <= served]
    return {"round": r + 1, "version": v, "records": total, "job": job, "label": label,
            "seconds": round(served - done, 3),
            "job_seconds": round(done - clock.created.get(job, done), 3),  # the training Job, created -> Complete
            "compose_jobs": len(composes),  # 0 when the training Job composed the served stack ahead
            "compose_seconds": round(max((clock.completed.get(n, served) - clock.created[n] for n in composes),
                                         default=0.0), 3)}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the largest of 30 is the p99)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)] if ordered else float("nan")


def run(rounds: int, work: Path, timeout: float, pods: int = PODS,
        training: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    cluster = LocalCluster(ClusterConfig(state_dir=work / "cluster")).start()
    try:
        # The operator's default resync period: what this measures is the reaction to the Job's completion.
        cfg = DemoConfig(work_dir=work, agents=(AGENT,), step_timeout=timeout, resync_seconds=RESYNC)
        scenario = FreshnessScenario(cfg, cluster)
        scenario.pods = pods
        scenario.training = dict(training or {})
        with scenario.running(pods=pods) as sc:
            sc.wait(f"{pods} vLLM pods ready", lambda: sc.status("swarms", sc.cfg.swarm).get("readyReplicas") == pods
                    or None)  # fmt: skip
            with Clock(sc) as clock:
                results: list[dict[str, Any]] = []
                refused: list[dict[str, Any]] = []
                for r in range(rounds):
                    got = one_round(sc, clock, r, timeout)
                    print(json.dumps(got), flush=True)
                    (refused if got.get("refused") else results).append(got)
    finally:
        cluster.stop()
    secs = [x["seconds"] for x in results]
    return {"rounds": rounds, "served_rounds": len(results), "pods": pods,
            "p50_s": round(statistics.median(secs), 3) if secs else None,
            "p99_s": round(percentile(secs, 99), 3) if secs else None,
            "max_s": max(secs, default=None), "compose_p50_s": round(statistics.median(
                [x["compose_seconds"] for x in results]), 3) if results else None,
            "rounds_with_compose_job": sum(1 for x in results if x["compose_jobs"]),
            "training_job_p50_s": round(statistics.median([x["job_seconds"] for x in results]), 3) if results else None,
            "anchor_s": 41.0, "target_p99_s": 3.0, "per_round": results,
            # The learning side (issue 14): what the gate found forgotten in each round it refused.
            "refused_rounds": refused, "training_overrides": training or {},
            "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30, help="training rounds")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed per step")
    ap.add_argument("--pods", type=int, default=PODS, help="vLLM pods (about 3 GB of memory each)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/freshness.json"), help="results file")
    ap.add_argument("--work", type=Path, help="keep the cluster's state and logs here (default: a temporary folder)")
    ap.add_argument("--replay-budget", type=int, help="the context tier's training.replayBudget (default: the demo's)")
    ap.add_argument("--replay-fraction", type=float, help="its training.replayFraction (default: the demo's)")
    args = ap.parse_args(argv)
    training = {k: v for k, v in (("replayBudget", args.replay_budget), ("replayFraction", args.replay_fraction))
                if v is not None}  # fmt: skip
    if args.work:
        result = run(args.rounds, args.work, args.timeout, args.pods, training)
    else:
        with tempfile.TemporaryDirectory(prefix="dynamiclora-freshness-") as tmp:
            result = run(args.rounds, Path(tmp), args.timeout, args.pods, training)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}: p50 {result['p50_s']} s, p99 {result['p99_s']} s over {result['served_rounds']} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
