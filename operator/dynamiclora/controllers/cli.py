"""``dynamiclora run``: start the operator."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import io
import logging
import os
import signal
import socket
from typing import Any


def _run(args: argparse.Namespace) -> int:
    import kopf
    from prometheus_client import start_http_server

    from dynamiclora.controllers import handlers
    from dynamiclora.controllers.leader import hold
    from dynamiclora.kube import ApiKube, CachedGets
    from dynamiclora.serving.metrics import REGISTRY
    from dynamiclora.settings import OperatorSettings

    try:
        settings = OperatorSettings.from_env(
            namespace=args.namespace,
            pvc_mount_root=args.pvc_root,
            pod_labels=args.pod_labels,
            allowed_images=args.allowed_images,
            allowed_service_accounts=args.allowed_service_accounts,
            secret_label=args.secret_label,
            training_runtime=args.training_runtime,
            adapters_host_root=args.adapters_host_root,
            resync_seconds=args.resync_seconds,
            feed_seconds=args.feed_seconds,
            metrics_port=args.metrics_port,
            trainer_threads=args.trainer_threads,
            scratch_dir=args.scratch_dir,
            audit_key_file=args.audit_key_file,
            audit_compact_threshold=args.audit_compact_threshold,
            audit_keep_loose=args.audit_keep_loose,
        )
        _ = settings.audit_signing_key  # an unreadable or too short key stops the start, not the first compaction
    except ValueError as err:
        print(f"dynamiclora run: {err}")
        return 2
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf logs every watch-event handler call ("Handler ... succeeded"), i.e. each status write we make;
    # our reconcilers log what they do themselves.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    api = ApiKube(args.kubeconfig)
    kube = CachedGets(api)
    handlers.register(settings)
    leadership = _leadership(args, api)

    @kopf.on.login()
    def _login(**_: Any) -> kopf.ConnectionInfo:
        # kopf authenticates with exactly the credentials our own client loaded (kubeconfig or in-cluster).
        return kopf.ConnectionInfo(**api.connection_info())

    @kopf.on.startup()
    def _configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        # Only watch-event handlers are registered (see handlers.register), so kopf stores no progress or
        # diff-base annotations on our objects; these settings keep any it might write under our prefix.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="dynamiclora.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="dynamiclora.io", key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING  # our own events carry the story; kopf's are noise
        settings.watching.server_timeout = 120
        # No cap on per-object workers (the thread pool bounds the real work), and let an idle worker go
        # soon: with a cap, each finished worker would hold its slot for idle_timeout (5 s by default).
        settings.batching.idle_timeout = 1.0
        memo["runtime"] = handlers.Runtime(kube=kube, settings=operator_settings, leadership=leadership)

    @kopf.on.startup()
    async def _start_resync(memo: Any, **_: Any) -> None:
        loop = asyncio.get_running_loop()
        # Reconcilers are synchronous and run in threads: size the pool for many objects at once.
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=32))
        memo["resync"] = loop.create_task(handlers.resync_forever(memo["runtime"]))
        if operator_settings.feed_seconds > 0:
            memo["feed"] = loop.create_task(handlers.feed_forever(memo["runtime"]))
        if leadership is not None:  # losing the Lease stops this process; it restarts as a follower
            memo["leader"] = loop.create_task(hold(leadership, lambda: os.kill(os.getpid(), signal.SIGTERM)))
        # `kill -USR1 <pid>` logs every asyncio task's stack: the way to see what a stuck operator awaits.
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)

    @kopf.on.cleanup()
    async def _stop_resync(memo: Any, **_: Any) -> None:
        for name in ("resync", "feed", "leader"):
            if (task := memo.get(name)) is not None:
                task.cancel()
        if leadership is not None:  # a follower takes over at once instead of waiting for expiry
            await asyncio.to_thread(leadership.release)

    operator_settings = settings
    start_http_server(settings.metrics_port, addr=args.metrics_host, registry=REGISTRY)
    logging.getLogger("dynamiclora").info("metrics on http://%s:%d/metrics", args.metrics_host, settings.metrics_port)
    namespaces = [settings.namespace] if settings.namespace else []
    asyncio.run(
        kopf.operator(
            standalone=True,
            namespaces=namespaces,
            clusterwide=not namespaces,
            liveness_endpoint=args.liveness,
            memo=kopf.Memo(),
        )
    )
    return 0


def _leadership(args: argparse.Namespace, api: Any) -> Any:
    """The leader election this operator takes part in, or None to run standalone."""
    from dynamiclora.controllers.leader import Leadership
    from dynamiclora.metrics import LEADER

    namespace = args.leader_election_namespace or os.environ.get("POD_NAMESPACE")
    if args.no_leader_election or not namespace:
        logging.getLogger("dynamiclora").warning(
            "no leader election (--no-leader-election, or no --leader-election-namespace and no POD_NAMESPACE): "
            "run a single replica")  # fmt: skip
        LEADER.set(1)  # standalone, it reconciles: a dashboard counting leaders must see it
        return None
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    return Leadership(api, namespace, identity, duration_s=args.leader_lease_seconds,
                      renew_s=max(1.0, args.leader_lease_seconds / 3))  # fmt: skip


def _dump_tasks() -> None:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=out)
    logging.getLogger("dynamiclora.operator").warning("asyncio tasks:\n%s", out.getvalue())


def register(sub: Any) -> None:
    """Add ``run``."""
    p = sub.add_parser("run", help="run the operator (kopf) against the current kubeconfig or in-cluster")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    p.add_argument("--namespace", help="watch only this namespace (default: all)")
    p.add_argument("--pvc-root", help="where storage PVCs are mounted: claim C at ROOT/C "
                   "(default /var/lib/dynamiclora/pvc)")  # fmt: skip
    p.add_argument("--scratch-dir", help="where adapters of S3-only swarms are composed before upload "
                   "(default /var/lib/dynamiclora/scratch)")  # fmt: skip
    p.add_argument("--pod-labels", help="key=value,... labels added to every Job and vLLM pod it creates")
    p.add_argument("--allowed-images", help="image prefixes a CR may name, comma-separated (default: any)")
    p.add_argument("--allowed-service-accounts", help="service accounts a CR's Jobs may use (default: any)")
    p.add_argument("--secret-label", help="key=value label a Secret needs for a CR to name it (default: none)")
    p.add_argument("--training-runtime", help="Kubeflow Trainer ClusterTrainingRuntime of data-parallel training "
                   "where its TrainJob CRD is installed (default: the operator's own launcher)")  # fmt: skip
    p.add_argument("--adapters-host-root",
                   help="single-node clusters: pods share ROOT/<namespace>/<swarm> for synced adapters")  # fmt: skip
    p.add_argument("--resync-seconds", type=float, help="period of the reconcile timers (default 10)")
    p.add_argument("--feed-seconds", type=float,
                   help="period of the store-feed poll that serves versions published by anyone (default 1; 0: off)")
    p.add_argument("--trainer-threads", type=int, help="CPU threads per trainer process (default 1)")
    p.add_argument("--metrics-port", type=int, help="port of /metrics (default 8080)")
    p.add_argument("--audit-key-file", help="file with the HMAC key signing compacted audit segments (default: "
                   "$DYNAMICLORA_AUDIT_KEY; neither: audit trails are never compacted)")  # fmt: skip
    p.add_argument("--audit-compact-threshold", type=int,
                   help="compact a tier's audit trail past this many loose records (default 256)")  # fmt: skip
    p.add_argument("--audit-keep-loose", type=int, help="newest audit records a compaction leaves loose (default 32)")
    p.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics (default 0.0.0.0)")
    p.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                   help="kopf liveness endpoint URL (default http://0.0.0.0:8081/healthz)")  # fmt: skip
    p.add_argument("--leader-election-namespace",
                   help="namespace of the leader Lease (default $POD_NAMESPACE; neither: no election)")  # fmt: skip
    p.add_argument("--leader-lease-seconds", type=float, default=15.0,
                   help="seconds without renewal after which a follower takes over (default 15)")  # fmt: skip
    p.add_argument("--no-leader-election", action="store_true", help="run standalone (a single replica only)")
    p.set_defaults(func=_run)
