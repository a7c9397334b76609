"""Create-if-absent on filesystems without hard links (many ReadWriteMany volumes): never half-written (issue 18).

The old fallback created the final name with ``O_EXCL`` and then wrote it, so a crash in between left a
truncated MANIFEST that counted as published and wedged the tier. ``os.link`` is made to fail as such a
filesystem fails; the crash is a fake fault (``os.replace`` raising), the one way to stop a writer at
exactly that point in a test.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from dynamiclora.storage import fs
from dynamiclora.storage.base import BlobNotFoundError
from dynamiclora.storage.fs import FsBackend
from dynamiclora.storage.store import BlobCheckpointStore


@pytest.fixture
def no_hardlinks(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kw: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(fs.os, "link", refuse)


def _adapter(tmp: Path) -> dict[str, Path]:
    f = tmp / "adapter.bin"
    f.write_bytes(b"weights")
    return {"adapter.bin": f}


@pytest.mark.usefixtures("no_hardlinks")
def test_exactly_one_writer_wins_and_versions_publish(tmp_path: Path) -> None:
    backend = FsBackend(tmp_path / "store")
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        wins.append(backend.put_bytes_if_absent("k/obj", f"writer {i}".encode()))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    assert backend.get_bytes("k/obj").startswith(b"writer ")

    store = BlobCheckpointStore(backend)
    assert [store.publish("ns", "t", _adapter(tmp_path)).version for _ in range(3)] == [1, 2, 3]
    assert store.read_file("ns", "t", 2, "adapter.bin") == b"weights"


@pytest.mark.usefixtures("no_hardlinks")
def test_a_writer_that_dies_before_the_rename_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FsBackend(tmp_path / "store")
    store = BlobCheckpointStore(backend)
    store.publish("ns", "t", _adapter(tmp_path))
    real_replace = os.replace

    def die(src: object, dst: object) -> None:
        if str(dst).endswith("MANIFEST.json"):
            raise KeyboardInterrupt("fake fault: the process dies between taking the name and renaming")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(fs.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        store.publish("ns", "t", _adapter(tmp_path))
    monkeypatch.setattr(fs.os, "replace", real_replace)
    # Version 2 was claimed and never published: readers see version 1 only, never a truncated manifest.
    assert store.list_versions("ns", "t") == [1]
    with pytest.raises(BlobNotFoundError):
        backend.get_bytes(store._key("ns", "t", 2, "MANIFEST.json"))
    assert not backend.put_bytes_if_absent(store._key("ns", "t", 2, "MANIFEST.json"), b"late")  # still taken
    assert store.publish("ns", "t", _adapter(tmp_path)).version == 3  # the next Job publishes the next number
    # Deleting an object frees its reservation and its directory.
    assert backend.put_bytes_if_absent("k/obj", b"x")
    backend.delete("k/obj")
    assert not (tmp_path / "store" / "k").exists()
    assert backend.put_bytes_if_absent("k/obj", b"y")  # a deleted name can be created again
