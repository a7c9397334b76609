"""Placement of many agents on a few vLLM pods, through the operator's own serving-pass function.

Drives ``dynamiclora.controllers.placement.plan_pods`` (what every serving pass calls) with a Swarm of N
agents on P simulated ready pods, each with ``--max-cpu-loras`` room, and the status each pass writes fed to
the next. Reports, per configuration: the most adapters on one pod against its room, replicas per agent
(min, max, agents short of the target), the spread of load between pods, the time of one placement, and
what moves when the world changes: nothing on a repeated pass, only the lost pod's agents when a pod goes,
and how many come back when it returns (hysteresis: none need to). Results: ``bench/results/placement.json``.

    python bench/placement.py --agents 1000 --pods 8 --configs 128:1 256:2 128:2 --out bench/results/placement.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dynamiclora.api.swarm import Swarm
from dynamiclora.controllers.placement import PodPlan, plan_pods


def _swarm(agents: int, room: int, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "dynamiclora.io/v1alpha1", "kind": "Swarm",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {
            "baseModel": {"name": "tiny-llama", "path": "/models/tiny"},
            "agents": [{"name": f"agent-{i:04d}"} for i in range(agents)],
            "inference": {"replicas": 8, "maxCpuLoras": room, "placement": {"replicasPerAgent": replicas}},
            "storage": {"pvc": {"claimName": "ckpt"}},
        },
    }  # fmt: skip


def _pass(sw: Swarm, last: dict[str, Any], pods: list[str]) -> tuple[PodPlan, float]:
    """One serving pass's placement; what it placed (``placedOn``) goes into ``last`` for the next pass, as the
    operator writes it into each agent's context tier and reads it back."""
    t0 = time.perf_counter()
    plan = plan_pods(sw, last, [a.name for a in sw.spec.agents], pods)
    took = time.perf_counter() - t0
    last.clear()
    last.update({a: {"placedOn": plan.ordinals(a)} for a in plan.placement.pods})
    return plan, took


def _moved(before: PodPlan, after: PodPlan) -> int:
    """Adapter replicas that appear on a pod they were not on."""
    return sum(len(set(p) - set(before.placement.pods.get(a, []))) for a, p in after.placement.pods.items())


def _figures(plan: PodPlan, pods: list[str], room: int, replicas: int) -> dict[str, Any]:
    load = [len(plan.agents_on(p)) for p in pods]
    counts = [len(p) for p in plan.placement.pods.values()]
    return {"max_adapters_on_a_pod": max(load), "room": room, "load_spread": max(load) - min(load),
            "replicas_target": min(replicas, len(pods)), "replicas_min": min(counts), "replicas_max": max(counts),
            "agents_short": len(plan.placement.short)}  # fmt: skip


def run(agents: int, n_pods: int, room: int, replicas: int) -> dict[str, Any]:
    pods = [f"bench-vllm-{i}" for i in range(n_pods)]
    sw = Swarm.model_validate(_swarm(agents, room, replicas))
    last: dict[str, Any] = {}
    first, took = _pass(sw, last, pods)
    out = _figures(first, pods, room, replicas) | {"place_ms": round(took * 1000, 1)}
    again, _ = _pass(sw, last, pods)
    out["moved_on_a_repeated_pass"] = _moved(first, again)
    lost = pods[-1]
    on_lost = len(again.agents_on(lost))
    shrunk, _ = _pass(sw, last, pods[:-1])
    out["pod_lost"] = {"replicas_on_it": on_lost, "moved": _moved(again, shrunk),
                       **_figures(shrunk, pods[:-1], room, replicas)}  # fmt: skip
    back, _ = _pass(sw, last, pods)
    out["pod_back"] = {"moved": _moved(shrunk, back), "on_it": len(back.agents_on(lost))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=1000, help="agents in the Swarm")
    ap.add_argument("--pods", type=int, default=8, help="ready vLLM pods")
    ap.add_argument("--configs", nargs="+", default=["128:1", "256:2", "128:2"],
                    help="ROOM:REPLICAS pairs: each pod's --max-cpu-loras and replicasPerAgent (128:2 oversubscribes)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/placement.json"), help="results file")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"agents": args.agents, "pods": args.pods}
    for config in args.configs:
        room, replicas = (int(x) for x in config.split(":"))
        key = f"room_{room}_replicas_{replicas}"
        results[key] = run(args.agents, args.pods, room, replicas)
        print(json.dumps({key: results[key]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
