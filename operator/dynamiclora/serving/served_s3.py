"""Where composed adapters live, and how those of S3-only swarms travel through the bucket.

On a filesystem store the compose Job writes them to :func:`local_served_dir`, the folder the vLLM pods
mount. A Swarm whose storage is S3 has no volume shared with its vLLM pods: the compose Job uploads each
agent's adapter under the store prefix (:func:`publish_adapter`)::

    <prefix>/served/<namespace>/<swarm>/<agent>/<key>/<files>     uploaded and verified one by one
    <prefix>/served/<namespace>/<swarm>/<agent>/<key>/COMPLETE    LAST: the file list with sha256s

The ``adapter-sync`` sidecar of every vLLM pod mirrors only keys that have the marker, so a pod never
sees a partial adapter, and it checks each downloaded file against the marker's sha256. The key is
content-addressed (the exact tier versions it was composed from), so an existing marker means the
upload is already done. The pods read the adapters at ``/adapters/<agent>/<key>``; the operator fetches a
copy into its scratch folder to read the adapter's rank and fingerprint (:class:`S3Served`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamiclora.serving.errors import ServingError, VLLMNotFound
from dynamiclora.serving.marker import COMPLETE_MARKER, marker_bytes
from dynamiclora.serving.mirror import AdapterMirror
from dynamiclora.storage.base import BlobBackend, BlobNotFoundError, StoreError
from dynamiclora.storage.schemes import blob_backend, local_path, scheme_of

ADAPTERS_MOUNT = "/adapters"  # where the sidecar's emptyDir is mounted in the vLLM container
SERVED_DIR = "served"


def served_prefix(namespace: str, swarm: str) -> str:
    """Key prefix (relative to the store root) of one swarm's composed adapters."""
    return f"{SERVED_DIR}/{namespace}/{swarm}"


def local_served_dir(store_uri: str, namespace: str, swarm: str) -> Path:
    """The folder of one swarm's composed adapters on a filesystem store (``file:///path`` or a path)."""
    root = local_path(store_uri)
    if root is None:
        raise ValueError(f"store URI {store_uri!r}: not a local store")
    return root / served_prefix(namespace, swarm)


def pod_adapter_path(agent: str, key: str, mount: str = ADAPTERS_MOUNT) -> str:
    """The directory of a composed adapter as the vLLM container sees it."""
    return f"{mount.rstrip('/')}/{agent}/{key}"


def remote_backend(store_uri: str, client: Any = None) -> BlobBackend:
    """The blob backend of a store whose files pods cannot open in place (every non-local scheme).

    Raises:
        ValueError: ``store_uri`` is a local store (its served adapters are folders read in place) or not
            a valid store URI.
    """
    if scheme_of(store_uri).local:
        raise ValueError(f"store URI {store_uri!r}: a local store's adapters are served in place, not mirrored")
    return blob_backend(store_uri, client)


def publish_adapter(backend: BlobBackend, local_dir: Path, key_prefix: str) -> bool:
    """Upload the adapter folder ``local_dir`` under ``key_prefix``, the COMPLETE marker last.

    Args:
        backend: the store's blob backend.
        local_dir: a composed adapter (flat folder of files).
        key_prefix: ``served/<ns>/<swarm>/<agent>/<key>``.

    Returns:
        True when uploaded now, False when the marker already existed (nothing written).
    """
    marker = f"{key_prefix}/{COMPLETE_MARKER}"
    try:
        backend.get_bytes(marker)
        return False
    except BlobNotFoundError:
        pass
    files = {p.name: p for p in sorted(local_dir.iterdir()) if p.is_file()}
    if "adapter_config.json" not in files:
        raise StoreError(f"{local_dir}: not a composed adapter (adapter_config.json missing)")
    for name, path in files.items():
        backend.put_file(f"{key_prefix}/{name}", path)
    # Create-if-absent: a concurrent writer of the same content-addressed key wrote identical files.
    backend.put_bytes_if_absent(marker, marker_bytes(files))
    return True


def fetch_published(backend: BlobBackend, swarm_prefix: str, swarm_dir: Path, agent: str, key: str) -> bool:
    """Download an already published adapter into the scratch folder ``swarm_dir/<agent>/<key>``.

    After an operator restart (its scratch is an emptyDir) this restores exactly the bytes the pods
    serve, fingerprint included, instead of composing them again.

    Returns:
        False when the adapter is not published (no marker): compose it.
    """
    try:
        backend.get_bytes(f"{swarm_prefix}/{agent}/{key}/{COMPLETE_MARKER}")
    except BlobNotFoundError:
        return False
    AdapterMirror(backend, swarm_prefix, swarm_dir).download(agent, key)
    return True


# An unmarked key younger than this may be an upload in flight (another pass of the operator composing the
# next version: a pass never waits for another): only older unmarked keys are uploads that died.
UPLOAD_GRACE_SECONDS = 600.0


def prune_remote(backend: BlobBackend, swarm_prefix: str, current: dict[str, str], agents: Collection[str],
                 keep_last: int = 3, now: float | None = None) -> list[str]:
    """Delete old composed adapters of a swarm from the bucket (the sidecars then drop their copies).

    Per agent, the current key and the ``keep_last`` newest complete keys stay (a pod may still serve
    the previous version until its sidecar has the new one, and a failed verification rolls back to
    it); agents no longer in the swarm lose every key, and so do unfinished uploads of old keys. Call it
    after this reconcile's uploads are done. The marker goes first, so a sidecar never sees
    a complete adapter whose files are being deleted.

    Returns:
        ``<agent>/<key>`` of every deleted adapter.
    """
    by_key: dict[tuple[str, str], list[str]] = {}
    marked: dict[tuple[str, str], float] = {}
    touched: dict[tuple[str, str], float] = {}  # newest object of each key
    for info in backend.list(swarm_prefix + "/"):
        parts = info.key[len(swarm_prefix) + 1:].split("/")
        if len(parts) != 3:
            continue
        by_key.setdefault((parts[0], parts[1]), []).append(info.key)
        stamp = info.modified.timestamp()
        touched[(parts[0], parts[1])] = max(touched.get((parts[0], parts[1]), stamp), stamp)
        if parts[2] == COMPLETE_MARKER:
            marked[(parts[0], parts[1])] = stamp
    in_flight = {k for k, t in touched.items()
                 if k not in marked and (time.time() if now is None else now) - t < UPLOAD_GRACE_SECONDS}
    doomed: list[tuple[str, str]] = []
    for agent in sorted({a for a, _ in by_key}):
        keys = sorted((k for a, k in marked if a == agent), key=lambda k: marked[(agent, k)], reverse=True)
        if agent not in agents:
            doomed += [(agent, k) for a, k in by_key if a == agent]
            continue
        keep = set(keys[:keep_last]) | {current.get(agent, "")}
        # Unmarked keys other than the current one are uploads that died, unless young enough to be in flight
        # (deleting the files of another pass's upload before it writes its marker left a marker with no files).
        doomed += sorted((a, k) for a, k in by_key if a == agent and k not in keep and (a, k) not in in_flight)
    for agent, key in doomed:
        objects = sorted(by_key[(agent, key)], key=lambda k: not k.endswith("/" + COMPLETE_MARKER))
        for obj in objects:
            backend.delete(obj)
    return [f"{a}/{k}" for a, k in doomed]


def prune_scratch(agent_dir: Path, keep: str) -> None:
    """Delete the operator's local copies of an agent's other composed adapters (the bucket has them)."""
    for p in agent_dir.iterdir():
        if p.is_dir() and p.name != keep and not p.name.startswith("."):  # dot: a compose in progress
            shutil.rmtree(p, ignore_errors=True)


def is_not_synced(exc: ServingError) -> bool:
    """Whether a failed load means the pod's sidecar has not mirrored the adapter yet.

    vLLM answers 404 with type ``NotFoundError`` (its ``LoRAAdapterNotFoundError``) when the adapter path
    does not exist on the pod. A 404 without that type (the load endpoint itself missing, when runtime
    LoRA updating is off) is a configuration error and stays a failure.
    """
    return isinstance(exc, VLLMNotFound) and exc.err_type == "NotFoundError"


@dataclass(frozen=True)
class S3Served:
    """The operator's side of one S3-only swarm's served adapters (blocking calls: run them in a thread)."""

    backend: BlobBackend = field(metadata={"help": "blob backend of the swarm's checkpoint store"})
    namespace: str = field(metadata={"help": "the swarm's namespace"})
    swarm: str = field(metadata={"help": "the swarm's name"})
    mount: str = field(default=ADAPTERS_MOUNT, metadata={"help": "where pods see the synced adapters"})

    def __post_init__(self) -> None:
        if not self.mount.startswith("/"):
            raise ValueError(f"S3Served.mount must be an absolute path, got {self.mount!r}")

    @property
    def prefix(self) -> str:
        return served_prefix(self.namespace, self.swarm)

    def root_uri(self) -> str:
        """The URI under which every agent's adapter is published as ``<agent>/<key>``."""
        return self.backend.describe(self.prefix)

    def restore(self, dest: Path, agent: str, key: str) -> bool:
        """Fetch ``dest`` (``<scratch>/<ns>/<swarm>/<agent>/<key>``) from the bucket when published."""
        return not dest.exists() and fetch_published(self.backend, self.prefix, dest.parent.parent, agent, key)

    def prune(self, current: dict[str, str], agents: Collection[str]) -> list[str]:
        """See :func:`prune_remote`."""
        return prune_remote(self.backend, self.prefix, current, agents)
