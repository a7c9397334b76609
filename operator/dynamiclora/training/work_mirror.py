"""A training run's checkpoints and its published marker, mirrored into the store (issue 18).

The Job's work directory is an emptyDir: a retried Job is a new pod that starts with an empty one. The
run therefore mirrors each checkpoint to ``<store>/_work/<namespace>/<tier>/v<version>/`` (the version
being produced, so every attempt at that version shares it), and the marker of what it published. A
retried attempt downloads the newest checkpoint before it starts and continues from it (bit for bit, as
from a local checkpoint), and one whose predecessor already published reports that version instead of
publishing a second one. Each object is replaced whole (``put_file``), and the ``LATEST`` pointer is
written after the checkpoint it names, so a kill at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from dynamiclora.storage.base import BlobBackend, BlobNotFoundError
from dynamiclora.training import checkpoint as ckpt

LATEST = "LATEST.json"
Log = Callable[[str], None]


class WorkMirror:
    """The store side of one version's work directory."""

    def __init__(self, backend: BlobBackend, published_name: str) -> None:
        self.backend = backend
        self.published_name = published_name

    def _put_text(self, key: str, text: str) -> None:
        with tempfile.TemporaryDirectory(prefix="dynamiclora-work-") as tmp:
            staged = Path(tmp) / "blob"
            staged.write_text(text)
            self.backend.put_file(key, staged)

    def restore(self, work: Path, log: Log) -> None:
        """Bring the newest mirrored checkpoint and the published marker into an empty ``work``."""
        work.mkdir(parents=True, exist_ok=True)
        try:
            self.backend.get_to_file(self.published_name, work / self.published_name)
            log(f"a previous attempt published: {self.backend.describe(self.published_name)}")
        except BlobNotFoundError:
            pass
        if ckpt.list_checkpoints(work):
            return  # this pod's own checkpoints are at least as new
        try:
            name = str(json.loads(self.backend.get_bytes(LATEST))["checkpoint"])
        except BlobNotFoundError:
            return
        staged = work / f".{name}.tmp-restore"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        self.backend.get_to_file(f"{name}/{ckpt.STATE}", staged / ckpt.STATE)
        shutil.rmtree(work / name, ignore_errors=True)  # an incomplete folder of this pod's own
        staged.rename(work / name)
        log(f"restored checkpoint {name} of a previous attempt from {self.backend.describe(name)}")

    def checkpoint_saved(self, path: Path) -> None:
        """Mirror a checkpoint just written locally, then point ``LATEST`` at it and drop older ones."""
        old = self._mirrored()
        self.backend.put_file(f"{path.name}/{ckpt.STATE}", path / ckpt.STATE)
        self._put_text(LATEST, json.dumps({"checkpoint": path.name}))
        for name in old - {path.name}:
            self.backend.delete(f"{name}/{ckpt.STATE}")

    def published(self, work: Path) -> None:
        """Mirror the published marker (a retry reports it), then drop the checkpoints: they are done."""
        self.backend.put_file(self.published_name, work / self.published_name)
        for name in self._mirrored():
            self.backend.delete(f"{name}/{ckpt.STATE}")
        self.backend.delete(LATEST)

    def forget_checkpoints(self, work: Path) -> None:
        """Drop restored checkpoints of another run (other records or settings): this attempt starts afresh."""
        for path in ckpt.list_checkpoints(work):
            shutil.rmtree(path)

    def _mirrored(self) -> set[str]:
        return {info.key.split("/")[0] for info in self.backend.list("") if info.key.endswith(f"/{ckpt.STATE}")}
