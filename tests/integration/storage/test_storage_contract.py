"""The CheckpointStore contract, run identically on the filesystem and S3 backends."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.storage import (
    CheckpointStore,
    ChecksumMismatchError,
    StoreError,
    VersionNotFoundError,
    open_store,
)
from dynamiclora.storage.store import BlobCheckpointStore

pytestmark = pytest.mark.integration


def _backend(store: CheckpointStore) -> Any:
    assert isinstance(store, BlobCheckpointStore)
    return store.backend


def test_publish_then_read_back_verified(store: CheckpointStore, files: dict[str, Path], tmp_path: Path) -> None:
    ref = store.publish("team-a", "alice-context", files, {"loss": 0.5})
    assert ref.version == 1
    assert ref.uri == store.version_uri("team-a", "alice-context", 1)
    assert ref.uri.endswith("/team-a/alice-context/v000001")
    assert store.list_versions("team-a", "alice-context") == [1]
    got = store.get("team-a", "alice-context", 1)
    assert got.manifest.metadata == {"loss": 0.5}
    assert got.digest == ref.digest and len(ref.digest) == 64
    assert set(got.manifest.files) == set(files)
    for name, path in files.items():
        assert store.read_file("team-a", "alice-context", 1, name) == path.read_bytes()
    dest = tmp_path / "dl"
    store.download("team-a", "alice-context", 1, dest)
    assert {p.name for p in dest.iterdir()} == set(files) | {"MANIFEST.json"}
    assert (dest / "adapter_model.safetensors").read_bytes() == files["adapter_model.safetensors"].read_bytes()


def test_versions_are_monotonic_per_tier(store: CheckpointStore, files: dict[str, Path]) -> None:
    assert [store.publish("ns", "t1", files).version for _ in range(3)] == [1, 2, 3]
    assert store.publish("ns", "t2", files).version == 1
    latest = store.latest("ns", "t1")
    assert latest is not None and latest.version == 3
    assert store.latest("ns", "never") is None
    with pytest.raises(VersionNotFoundError, match="version 9 of tier ns/t1 is not published"):
        store.get("ns", "t1", 9)


def test_unpublished_files_are_invisible(store: CheckpointStore, files: dict[str, Path]) -> None:
    store.publish("ns", "t", files)
    backend = _backend(store)
    # What a crashed writer leaves: a claim and some files of v2, no manifest.
    backend.put_bytes_if_absent("ns/t/v000002/CLAIM.json", b"{}")
    backend.put_file("ns/t/v000002/adapter_model.safetensors", files["adapter_model.safetensors"])
    assert store.list_versions("ns", "t") == [1]
    latest = store.latest("ns", "t")
    assert latest is not None and latest.version == 1
    with pytest.raises(VersionNotFoundError):
        store.get("ns", "t", 2)
    # The next writer skips the crashed writer's number rather than mixing files into it.
    assert store.publish("ns", "t", files).version == 3


def test_corrupted_object_detected_on_read(store: CheckpointStore, files: dict[str, Path], tmp_path: Path) -> None:
    store.publish("ns", "t", files)
    bad = tmp_path / "bad"
    bad.write_bytes(b"tampered" + files["adapter_model.safetensors"].read_bytes()[8:])
    _backend(store).put_file("ns/t/v000001/adapter_model.safetensors", bad)
    with pytest.raises(ChecksumMismatchError, match=r"checksum mismatch for .*ns/t/v000001/adapter_model\.safetensors"):
        store.read_file("ns", "t", 1, "adapter_model.safetensors")
    dest = tmp_path / "dl"
    with pytest.raises(ChecksumMismatchError, match=r"adapter_model\.safetensors"):
        store.download("ns", "t", 1, dest)
    assert not (dest / "adapter_model.safetensors").exists()
    assert not (dest / "MANIFEST.json").exists()
    # Untouched files of the same version still read fine.
    assert store.read_file("ns", "t", 1, "stats.json") == files["stats.json"].read_bytes()


def test_missing_object_named_in_error(store: CheckpointStore, files: dict[str, Path]) -> None:
    store.publish("ns", "t", files)
    _backend(store).delete("ns/t/v000001/stats.json")
    with pytest.raises(StoreError, match=r"ns/t/v000001/stats\.json is listed in the manifest but missing"):
        store.read_file("ns", "t", 1, "stats.json")


def test_retention_keeps_latest_protected_and_fresh_garbage(store: CheckpointStore, files: dict[str, Path]) -> None:
    for _ in range(6):
        store.publish("ns", "t", files)
    backend = _backend(store)
    backend.put_bytes_if_absent("ns/t/v000007/CLAIM.json", b"{}")  # a writer still uploading
    report = store.retain("ns", "t", keep_last=2, protected=frozenset({1, 3}))
    assert report.kept == [1, 3, 5, 6]
    assert report.deleted == [2, 4]
    assert report.garbage_kept == [7] and report.garbage_deleted == []
    assert store.list_versions("ns", "t") == [1, 3, 5, 6]
    assert not [b for b in backend.list("ns/t/v000002/")]
    # Protected versions still read back intact.
    assert store.read_file("ns", "t", 3, "stats.json") == files["stats.json"].read_bytes()
    # Once stale, the crashed writer's files go too.
    later = datetime.now(UTC) + timedelta(hours=2)
    report = store.retain("ns", "t", keep_last=1, protected=frozenset({3}), now=later)
    assert report.garbage_deleted == [7]
    assert store.list_versions("ns", "t") == [3, 6]
    assert not backend.list("ns/t/v000007/")


def test_concurrent_writers_get_distinct_versions(store_uri: str, files: dict[str, Path]) -> None:
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def writer() -> None:
        store = open_store(store_uri)  # each writer its own client, as separate Jobs would have
        try:
            barrier.wait()
            results.append(store.publish("ns", "race", files).version)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(results) == [1, 2, 3, 4]
    assert open_store(store_uri).list_versions("ns", "race") == [1, 2, 3, 4]


def test_create_if_absent_has_exactly_one_winner(store: CheckpointStore) -> None:
    backend = _backend(store)
    outcomes: list[bool] = []
    barrier = threading.Barrier(6)

    def attempt(i: int) -> None:
        barrier.wait()
        outcomes.append(backend.put_bytes_if_absent("ns/t/v000001/MANIFEST.json", f"writer {i}".encode()))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == [False] * 5 + [True]
    assert backend.get_bytes("ns/t/v000001/MANIFEST.json").startswith(b"writer ")


def test_bad_names_rejected(store: CheckpointStore, files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="invalid tier"):
        store.publish("ns", "../etc", files)
    with pytest.raises(ValueError, match="invalid checkpoint file name"):
        store.publish("ns", "t", {"MANIFEST.json": files["stats.json"]})
    assert store.list_versions("ns", "t") == []


def test_each_publish_marks_the_tiers_newest_version_in_the_namespace_feed(
    store: CheckpointStore, files: dict[str, Path]
) -> None:
    """One listing of ``<ns>/_feed/`` gives every tier's newest version (the operator's store feed)."""
    assert store.heads("ns") == {}
    for _ in range(3):
        store.publish("ns", "a.v1-context", files)  # a '.v' in the name does not confuse the mark's version
    store.publish("ns", "b", files)
    store.publish("other", "a.v1-context", files)
    assert store.heads("ns") == {"a.v1-context": 3, "b": 1}
    assert store.heads("other") == {"a.v1-context": 1}
    marks = sorted(b.key for b in _backend(store).list("ns/_feed/"))
    assert marks == ["ns/_feed/a.v1-context@v000003", "ns/_feed/b@v000001"]  # older marks are dropped
    assert store.list_versions("ns", "a.v1-context") == [1, 2, 3]  # the feed is no tier's version


def test_a_mark_that_cannot_be_written_leaves_the_version_published(
    store: CheckpointStore, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed is a hint: the manifest is already written, so a failed mark fails nothing (named fault:
    a backend that refuses the feed's key, which no real store does on demand)."""
    backend = _backend(store)
    real = backend.put_bytes_if_absent

    def refuse_feed(key: str, data: bytes) -> bool:
        if "/_feed/" in key:
            raise StoreError(f"{key}: refused")
        return bool(real(key, data))

    monkeypatch.setattr(backend, "put_bytes_if_absent", refuse_feed)
    said: list[str] = []
    ref = store.publish("ns", "t", files, progress=said.append)
    assert ref.version == 1 and store.list_versions("ns", "t") == [1]
    assert store.heads("ns") == {}
    assert "not written" in said[-1] and "next resync" in said[-1]
