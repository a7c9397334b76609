"""``dynamiclora adapter-sync``: the sidecar that mirrors an S3-only swarm's composed adapters into a vLLM
pod's volume, pass after pass (:class:`dynamiclora.serving.mirror.AdapterMirror` does one pass and says how
the files appear atomically).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from dynamiclora.serving.mirror import AdapterMirror, SyncReport

log = logging.getLogger("dynamiclora.adapter_sync")


def _pass_with_retries(mirror: AdapterMirror, retries: int, backoff_s: float) -> SyncReport:
    """One pass, repeated (bounded) while it fails as a whole or leaves adapters unsynced."""
    report = SyncReport()
    for attempt in range(retries + 1):
        try:
            report = mirror.sync_once()
        except Exception as e:  # botocore raises its own types; every failure is retried the same way
            report = SyncReport(errors={"<listing>": f"{type(e).__name__}: {e}"})
            log.warning("sync pass %d/%d failed: %s", attempt + 1, retries + 1, e)
        if not report.errors:
            return report
        if attempt < retries:
            time.sleep(backoff_s * 2**attempt)
    return report


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from dynamiclora.serving.served_s3 import remote_backend

    try:
        if args.interval <= 0:
            raise ValueError(f"--interval must be positive, got {args.interval}")
        if args.retries < 0:
            raise ValueError(f"--retries must be >= 0, got {args.retries}")
        backend: Any = remote_backend(args.store)
        mirror = AdapterMirror(backend, args.source, Path(args.dest))
    except ValueError as e:
        print(f"dynamiclora adapter-sync: {e}")
        return 2
    if args.once:
        report = _pass_with_retries(mirror, args.retries, args.interval)
        for label, err in sorted(report.errors.items()):
            print(f"dynamiclora adapter-sync: {label}: {err}")
        return 1 if report.errors else 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    failures = 0
    while not stop.is_set():
        report = _pass_with_retries(mirror, 0, args.interval)
        failures = failures + 1 if "<listing>" in report.errors else 0
        if args.max_failures and failures >= args.max_failures:
            # Exit so that the kubelet restarts the container (and its restarts show the problem).
            where = backend.describe(mirror.source)
            log.error("listing %s failed %d times in a row; exiting", where, failures)
            return 1
        stop.wait(args.interval)
    return 0


def register(sub: Any) -> None:
    """Add ``adapter-sync``."""
    p = sub.add_parser("adapter-sync", help="mirror a swarm's composed adapters from S3 into a local folder "
                       "(the sidecar of vLLM pods of S3-only swarms)")  # fmt: skip
    p.add_argument("--store", required=True, help="checkpoint store, s3://BUCKET/PREFIX")
    p.add_argument("--source", required=True, help="key prefix under the store: served/<namespace>/<swarm>")
    p.add_argument("--dest", required=True, help="local folder shared with vLLM (e.g. /adapters)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between passes (default 2)")
    p.add_argument("--once", action="store_true", help="one pass (with retries), then exit")
    p.add_argument("--retries", type=int, default=3, help="retries of a failing pass with --once (default 3)")
    p.add_argument("--max-failures", type=int, default=30,
                   help="exit after this many failed listings in a row, 0 = never (default 30)")  # fmt: skip
    p.set_defaults(func=_run)
