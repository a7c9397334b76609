"""The mirror behind ``dynamiclora adapter-sync``: an S3-only swarm's composed adapters into a pod's volume.

The operator uploads every composed adapter under ``<store>/served/<ns>/<swarm>/<agent>/<key>/`` and
writes a ``COMPLETE`` marker (the file list with sha256s) last. This sidecar mirrors every adapter that
has its marker into ``<dest>/<agent>/<key>/``: the files are downloaded into a hidden temporary folder in
``dest``, checked against the marker, then renamed into place, so vLLM never sees a partial adapter.
Local adapters whose remote copy is gone are removed (renamed away first, then deleted). Several
mirrors may share one ``dest`` (the local executor's pods do): renames decide who wins, and only
temporary folders older than :data:`STALE_TMP_S` are treated as leftovers of a crashed pass.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dynamiclora.serving.marker import COMPLETE_MARKER, parse_marker
from dynamiclora.storage.base import BlobBackend, StoreError, sha256_file, validate_name

log = logging.getLogger("dynamiclora.adapter_sync")

_TMP_PREFIX = ".sync-"
_DEL_PREFIX = ".del-"
STALE_TMP_S = 600.0


@dataclass
class SyncReport:
    """What one pass did."""

    synced: list[str] = field(default_factory=list)  # "<agent>/<key>" downloaded in this pass
    removed: list[str] = field(default_factory=list)  # "<agent>/<key>" deleted (remote copy gone)
    present: list[str] = field(default_factory=list)  # complete remote adapters already mirrored
    errors: dict[str, str] = field(default_factory=dict)  # "<agent>/<key>" -> why it was not synced


def _valid(component: str) -> bool:
    try:
        validate_name("path component", component)
    except ValueError:
        return False
    return True


class AdapterMirror:
    """Mirror complete adapters from ``backend`` under ``source`` into the local folder ``dest``.

    Args:
        backend: the store's blob backend (S3 in a pod; the filesystem backend works too).
        source: key prefix of the swarm's adapters, e.g. ``served/team-a/support``.
        dest: local folder shared with the vLLM container (``/adapters``).
    """

    def __init__(self, backend: BlobBackend, source: str, dest: Path) -> None:
        self.backend = backend
        self.source = source.strip("/")
        if not self.source:
            raise ValueError("--source must name a key prefix such as served/<namespace>/<swarm>")
        self.dest = dest

    def remote_complete(self) -> set[tuple[str, str]]:
        """(agent, key) of every remote adapter whose COMPLETE marker exists."""
        prefix = self.source + "/"
        out: set[tuple[str, str]] = set()
        for info in self.backend.list(prefix):
            parts = info.key[len(prefix):].split("/")
            if len(parts) == 3 and parts[2] == COMPLETE_MARKER and _valid(parts[0]) and _valid(parts[1]):
                out.add((parts[0], parts[1]))
        return out

    def local_adapters(self) -> set[tuple[str, str]]:
        """(agent, key) of every adapter folder in ``dest`` (temporary folders excluded)."""
        out: set[tuple[str, str]] = set()
        if not self.dest.is_dir():
            return out
        for agent in self.dest.iterdir():
            if agent.is_dir() and not agent.name.startswith("."):
                keys = [k for k in agent.iterdir() if k.is_dir() and not k.name.startswith(".")]
                out |= {(agent.name, k.name) for k in keys}
        return out

    def _clean_temporaries(self) -> None:
        # Leftovers of an interrupted pass; recent ones may belong to another mirror still working.
        if not self.dest.is_dir():
            return
        cutoff = time.time() - STALE_TMP_S
        for agent in self.dest.iterdir():
            if agent.is_dir() and not agent.name.startswith("."):
                for p in agent.iterdir():
                    with contextlib.suppress(FileNotFoundError):
                        if p.name.startswith((_TMP_PREFIX, _DEL_PREFIX)) and p.stat().st_mtime < cutoff:
                            shutil.rmtree(p, ignore_errors=True)

    def download(self, agent: str, key: str) -> int:
        """Download one complete adapter atomically; returns its size in bytes.

        Raises:
            StoreError: the marker is invalid, a file is missing, or a checksum differs.
        """
        prefix = f"{self.source}/{agent}/{key}"
        marker_key = f"{prefix}/{COMPLETE_MARKER}"
        files = parse_marker(self.backend.get_bytes(marker_key), self.backend.describe(marker_key))
        parent = self.dest / agent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f"{_TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        total = 0
        try:
            for name, (digest, size) in sorted(files.items()):
                self.backend.get_to_file(f"{prefix}/{name}", tmp / name)
                got_digest, got_size = sha256_file(tmp / name)
                if (got_digest, got_size) != (digest, size):
                    where = self.backend.describe(f"{prefix}/{name}")
                    raise StoreError(f"{where}: sha256/size {got_digest[:12]}/{got_size} differ from the "
                                     f"marker's {digest[:12]}/{size}")
                total += size
            try:
                os.rename(tmp, parent / key)  # readers see nothing or the whole adapter
            except OSError:
                if not (parent / key).is_dir():
                    raise
                # Another mirror sharing dest renamed the same verified adapter first.
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return total

    def remove(self, agent: str, key: str) -> None:
        """Delete a local adapter: renamed away first so no reader sees it half-deleted."""
        parent = self.dest / agent
        doomed = parent / f"{_DEL_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(parent / key, doomed)
        except FileNotFoundError:
            return  # another mirror sharing dest removed it
        shutil.rmtree(doomed, ignore_errors=True)
        with contextlib.suppress(OSError):
            parent.rmdir()  # only when that was the agent's last adapter

    def sync_once(self) -> SyncReport:
        """One pass: download missing complete adapters, remove those gone remotely.

        Raises:
            StoreError: the remote listing failed (nothing is removed then).
        """
        report = SyncReport()
        self.dest.mkdir(parents=True, exist_ok=True)
        self._clean_temporaries()
        remote = self.remote_complete()
        local = self.local_adapters()
        for agent, key in sorted(remote - local):
            label = f"{agent}/{key}"
            start = time.monotonic()
            try:
                size = self.download(agent, key)
            except (StoreError, OSError) as e:
                report.errors[label] = str(e)
                log.warning("adapter %s not synced: %s", label, e)
                continue
            report.synced.append(label)
            log.info("synced adapter %s (%d bytes) into %s in %.2fs", label, size, self.dest / agent / key,
                     time.monotonic() - start)
        for agent, key in sorted(local - remote):
            self.remove(agent, key)
            report.removed.append(f"{agent}/{key}")
            log.info("removed adapter %s/%s (no longer in %s)", agent, key, self.backend.describe(self.source))
        report.present = sorted(f"{a}/{k}" for a, k in remote & local)
        return report
