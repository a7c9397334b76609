"""Operator convergence time and peak memory against object count (training disabled).

For each size (10, 100, 1,000 and 10,000 agents) on the local control plane: start a fresh ``dynamiclora run``,
apply one Swarm with N agents (0 inference replicas, no interaction records, so no Job and no vLLM pod),
and measure the time until every object is reconciled: the Swarm's status counts N agents and all 2N
per-agent LoRATiers it created report ``status.observedGeneration``. Peak RSS is the operator process's
``VmHWM``. Results go to ``bench/results/scale.json`` and the table in ``docs/benchmarks.md``.

Then, with nothing left to do, the steady state: for ``--steady-seconds`` after two resync periods, the
API server's own request counter (``apiserver_request_total``, every client's writes, kopf's annotations
and the operator's status patches and events alike) counts the write requests (create, update, patch,
delete) by resource. Lease renewals are counted apart: the operator's leader Lease and the control plane's
own leader elections both renew one (that heartbeat is liveness, not reconciling).

    python bench/scale.py --sizes 10 100 1000 10000 --out bench/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dynamiclora_dev.demo.scenario import GROUP_PATH, DemoConfig, Scenario
from dynamiclora_dev.localcluster.cluster import LocalCluster
from dynamiclora_dev.localcluster.controlplane import ClusterConfig


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "APPLY"})
# What the operator writes (besides its leader Lease and its events): the rest is the control plane's and
# kwok's (node heartbeats, their own leases).
OPERATOR_RESOURCES = ("dynamiclora.io/", "apps/statefulsets", "services", "configmaps", "secrets", "batch/jobs",
                      "discovery.k8s.io/endpointslices", "trainer.kubeflow.org/")


def write_counts(metrics_text: str) -> dict[str, float]:
    """Write requests the API server has served so far, by resource (``group/resource``, core as ``resource``)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name != "apiserver_request_total" or labels.get("verb") not in WRITE_VERBS:
                continue
            res = "/".join(p for p in (labels.get("group"), labels.get("resource"), labels.get("subresource")) if p)
            counts[res] = counts.get(res, 0.0) + sample.value
    return counts


def _event_counts(sc: Scenario) -> dict[str, int]:
    """Every Event's count by who reported it and why (``component/reason``)."""
    counts: dict[str, int] = {}
    for e in sc.rest.get("/api/v1/events")["items"]:
        who = e.get("reportingComponent") or (e.get("source") or {}).get("component") or "?"
        key = f"{who}/{e.get('reason')}"
        counts[key] = counts.get(key, 0) + int(e.get("count") or 1)
    return counts


def steady_writes(sc: Scenario, settle: float, seconds: float) -> dict[str, Any]:
    """Writes per minute while the operator has nothing to do (see the module's docstring); the events
    written meanwhile are named by reporter and reason (the counter only says "events")."""
    time.sleep(settle)
    before, events_before = write_counts(sc.rest.text("/metrics")), _event_counts(sc)
    time.sleep(seconds)
    after, events_after = write_counts(sc.rest.text("/metrics")), _event_counts(sc)
    per_min = {r: round((after[r] - before.get(r, 0.0)) * 60 / seconds, 2) for r in after}
    moved = {r: v for r, v in sorted(per_min.items()) if v}
    leases = sum(v for r, v in moved.items() if r.endswith("leases"))
    events = {k: n - events_before.get(k, 0) for k, n in sorted(events_after.items()) if n > events_before.get(k, 0)}
    ours = sum(v for r, v in moved.items() if r.startswith(OPERATOR_RESOURCES))
    ours += sum(n for k, n in events.items() if k.startswith("dynamiclora")) * 60 / seconds
    return {"operator_writes_per_min": round(ours, 2), "writes_per_min": round(sum(moved.values()) - leases, 2),
            "lease_renewals_per_min": round(leases, 2), "by_resource": moved, "events": events, "window_s": seconds}


def _swarm(name: str, n: int, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "dynamiclora.io/v1alpha1", "kind": "Swarm", "metadata": {"name": name, "namespace": ns},
        "spec": {
            "baseModel": {"name": "tiny-llama", "path": "/models/tiny"},
            "agents": [{"name": f"agent-{i:04d}"} for i in range(n)],
            "inference": {"replicas": 0},
            "storage": {"pvc": {"claimName": "ckpt", "path": "scale"}},
        },
    }  # fmt: skip


def measure(sc: Scenario, n: int, timeout: float, steady: float = 0.0) -> dict[str, Any]:
    ns, name = sc.cfg.namespace, f"scale-{n}"
    sc.start_operator()
    assert sc.operator is not None
    pid = sc.operator.pid
    time.sleep(3)  # let kopf finish its start-up scans before the clock starts
    t0 = time.monotonic()
    sc.apply([_swarm(name, n, ns)])

    next_list = [0.0]

    def converged() -> bool:
        st = sc.status("swarms", name)
        # Listing 2N tiers is work for the API server on the same cores (10,000 agents: 20,000 objects a
        # list): spaced by four times what the last one took, the probe does not slow down what it measures.
        if st.get("agentCount") != n or time.monotonic() < next_list[0]:
            return False
        started = time.monotonic()
        items = sc.rest.get(f"{GROUP_PATH}/namespaces/{ns}/loratiers",
                            params={"labelSelector": f"dynamiclora.io/swarm={name}"})["items"]  # fmt: skip
        next_list[0] = time.monotonic() + 4 * (time.monotonic() - started)
        done = sum(1 for t in items if (t.get("status") or {}).get("observedGeneration"))
        return len(items) == 2 * n and done == 2 * n

    sc.wait(f"{n} agents ({2 * n} tiers) reconciled", lambda: converged() or None, timeout=timeout)
    converge_s = time.monotonic() - t0
    rss = _peak_rss_mb(pid)
    out: dict[str, Any] = {"converge_s": round(converge_s, 2), "peak_rss_mb": round(rss, 1), "objects": 2 * n + 1}
    if steady > 0:
        out["steady"] = steady_writes(sc, 2 * sc.cfg.resync_seconds, steady)
    sc.stop_operator()
    sc.kubectl("delete", "swarm", name, "-n", ns, "--wait=false")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="agents per run")
    ap.add_argument("--out", type=Path, default=Path("bench/results/scale.json"), help="results file")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed per size")
    ap.add_argument("--steady-seconds", type=float, default=60,
                    help="count the API writes this long once converged (0: skip)")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dynamiclora-scale-") as tmp:
        cluster = LocalCluster(ClusterConfig(state_dir=Path(tmp) / "cluster")).start()
        try:
            sc = Scenario(DemoConfig(work_dir=Path(tmp), resync_seconds=30), cluster)
            sc.install_crds()
            sc.apply([{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt",
                       "namespace": "default"}, "spec": {"accessModes": ["ReadWriteMany"],
                       "resources": {"requests": {"storage": "1Gi"}}}}])  # fmt: skip
            for n in args.sizes:
                results[f"agents_{n}"] = measure(sc, n, args.timeout, args.steady_seconds)
                print(json.dumps({f"agents_{n}": results[f"agents_{n}"]}), flush=True)
        finally:
            cluster.stop()
    results["machine"] = {"cores": __import__("os").cpu_count(), "python": sys.version.split()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
