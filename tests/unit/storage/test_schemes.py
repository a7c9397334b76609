"""The storage scheme registry: one registration makes a new backend reachable from every byte path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.serving.served_s3 import local_served_dir, remote_backend
from dynamiclora.storage import open_store
from dynamiclora.storage.base import BlobBackend, RecordSource
from dynamiclora.storage.fs import FsBackend, FsRecordSource
from dynamiclora.storage.record_count import LineCounts, count_records
from dynamiclora.storage.results import read_result, write_result
from dynamiclora.storage.schemes import SCHEMES, Location, Scheme, local_path, location, register_scheme, scheme_of
from dynamiclora.training.records import RecordsError, iter_sources


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Path]:
    """A scheme registered by a test alone: ``vault://<bucket>/<key>`` -> folders of tmp_path, not local."""
    root = tmp_path / "vault"

    def parse(uri: str) -> Location:
        bucket, _, key = uri.removeprefix("vault://").partition("/")
        if not bucket:
            raise ValueError(f"location {uri!r}: missing bucket")
        return Location(uri, "vault", bucket, key)

    def blobs(loc: Location, client: Any) -> BlobBackend:
        return FsBackend(root / loc.bucket / loc.path)

    def records(loc: Location, client: Any) -> RecordSource:
        return FsRecordSource(str(root / loc.bucket / loc.path))

    register_scheme(Scheme("vault", local=False, blobs=blobs, records=records, parse=parse))
    yield root
    del SCHEMES["vault"]


def test_a_registered_scheme_serves_every_byte_path(vault: Path) -> None:
    (vault / "b" / "recs" / "alice").mkdir(parents=True)
    (vault / "b" / "recs" / "alice" / "a.jsonl").write_text('{"x": 1}\n\n{"x": 2}\n')
    assert count_records("vault://b/recs/alice/", cache=LineCounts()) == 2
    assert [name.endswith("a.jsonl") for name, _ in iter_sources("vault://b/recs/alice/")] == [True]

    write_result("vault://b/store/_jobs/ns/job.json", '{"ok": true}')
    assert read_result("vault://b/store/_jobs/ns/job.json") == b'{"ok": true}'
    assert open_store("vault://b/store").list_versions("ns", "tier") == []
    assert remote_backend("vault://b/store").get_bytes("_jobs/ns/job.json") == b'{"ok": true}'
    assert local_path("vault://b/store") is None
    with pytest.raises(ValueError, match="not a local store"):
        local_served_dir("vault://b/store", "ns", "sw")


def test_unknown_schemes_and_malformed_locations_are_named() -> None:
    with pytest.raises(ValueError, match=r"unsupported scheme 'gs' \(use file://, s3://\)"):
        scheme_of("gs://bucket/x")
    with pytest.raises(ValueError, match="missing bucket"):
        location("s3:///key")
    with pytest.raises(ValueError, match="must be absolute"):
        location("relative/path")
    with pytest.raises(RecordsError, match="unsupported scheme"):
        list(iter_sources("gs://bucket/x.jsonl"))
    with pytest.raises(ValueError, match="registered twice"):
        register_scheme(SCHEMES["s3"])


def test_local_and_remote_stores(tmp_path: Path) -> None:
    assert local_path(f"file://{tmp_path}") == tmp_path and local_path(str(tmp_path)) == tmp_path
    assert local_served_dir(f"file://{tmp_path}", "ns", "sw") == tmp_path / "served" / "ns" / "sw"
    with pytest.raises(ValueError, match="served in place"):
        remote_backend(f"file://{tmp_path}")
    with pytest.raises(RecordsError, match="no such file or directory"):
        list(iter_sources(str(tmp_path / "missing.jsonl")))
    assert list(iter_sources(str(tmp_path))) == []  # an existing folder without records is empty, not missing
