"""``dynamiclora-dev demo``: the whole loop on a local control plane, with readable progress."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

DEFAULT_WORK = Path.home() / ".cache" / "dynamiclora" / "demo"


def _demo(args: argparse.Namespace) -> int:
    from dynamiclora_dev.demo.scenario import DemoConfig, Scenario, StepFailed, StepTimeout
    from dynamiclora_dev.localcluster.cluster import LocalCluster, stop_detached
    from dynamiclora_dev.localcluster.controlplane import ClusterConfig

    work: Path = args.work_dir
    state = work / "cluster"
    if args.down:
        stopped = stop_detached(state)
        _stop_operator(work)
        print("demo stopped" if stopped else "no demo cluster was running")
        return 0
    stop_detached(state)  # a previous demo's leftovers
    _stop_operator(work)
    # A fresh cluster every time: a kept etcd would bring back the previous run's objects and statuses
    # (a Swarm "ready" with a pod that no longer runs). The model folder is kept, it is reproducible.
    shutil.rmtree(state, ignore_errors=True)
    t0 = time.monotonic()
    print(f"DynamicLoRA demo (work folder {work})")
    cfg = DemoConfig(work_dir=work)
    print("[0/7] building the tiny Llama model and starting the local control plane (etcd, kube-apiserver, "
          "controller-manager, scheduler, kwok, local executor)")  # fmt: skip
    cluster = LocalCluster(ClusterConfig(state_dir=state), detach=True).start()
    scenario = Scenario(cfg, cluster)
    scenario.prepare_model()
    scenario.install_crds()
    scenario.start_operator()
    assert scenario.operator is not None
    (work / "operator.pid").write_text(str(scenario.operator.pid))
    print(f"  operator running (pid {scenario.operator.pid}, log {scenario.operator_log})")
    scenario.apply(scenario.manifests())
    print("  applied: PVC ckpt, LoRATier support-swarm, Swarm support (agents alice, bob), "
          "MigrationPolicy support-consolidation")  # fmt: skip
    try:
        scenario.run_loop()
        scenario.run_gate_step()
    except (StepTimeout, StepFailed) as err:
        print(f"FAILED: {err}")
        print(scenario.explore_hint())
        return 1
    print(f"\nThe loop ran end to end in {time.monotonic() - t0:.0f}s: training -> publish -> hot-swap -> "
          "migration -> hot-swap -> a poisoned update refused. The cluster and the operator keep running.")  # fmt: skip
    print(scenario.explore_hint())
    print(f"Stop everything with: dynamiclora-dev demo --down --work-dir {work}")
    return 0


def _stop_operator(work: Path) -> None:
    import contextlib
    import os
    import signal

    pid_file = work / "operator.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
        pid_file.unlink(missing_ok=True)


def register(sub: Any) -> None:
    """Add ``demo``."""
    p = sub.add_parser("demo", help="run the whole loop locally: cluster, operator, training, migration, hot-swap")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK, help="state folder (default %(default)s)")
    p.add_argument("--down", action="store_true", help="stop a running demo (cluster and operator)")
    p.set_defaults(func=_demo)
