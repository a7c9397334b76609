"""Publication of composed adapters for S3-only swarms, and the sidecar's mirror, on the filesystem backend.

The filesystem backend implements the same BlobBackend protocol as S3 (the S3 runs are in
tests/integration/serving/test_adapter_sync.py); here the layout and ordering rules are checked fast.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from dynamiclora.serving.errors import VLLMBadRequest, VLLMServerError, parse_error
from dynamiclora.serving.marker import COMPLETE_MARKER, parse_marker
from dynamiclora.serving.mirror import STALE_TMP_S, AdapterMirror, SyncReport
from dynamiclora.serving.served_s3 import (
    UPLOAD_GRACE_SECONDS,
    fetch_published,
    is_not_synced,
    pod_adapter_path,
    prune_remote,
    prune_scratch,
    publish_adapter,
    remote_backend,
    served_prefix,
)
from dynamiclora.serving.sync_cli import _pass_with_retries
from dynamiclora.storage.base import StoreError
from dynamiclora.storage.fs import FsBackend


class RecordingBackend(FsBackend):
    """A real filesystem backend that also records the order of writes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes: list[str] = []

    def put_file(self, key: str, src: Path) -> None:
        super().put_file(key, src)
        self.writes.append(key)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        self.writes.append(key)
        return super().put_bytes_if_absent(key, data)


def make_adapter(path: Path, seed: int) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA", "seed": seed}))
    (path / "adapter_model.safetensors").write_bytes(bytes([seed % 256]) * 4096)
    (path / "composition.json").write_text(json.dumps({"key": f"k{seed}"}))
    return path


def test_layout_marker_last_and_idempotent(tmp_path: Path) -> None:
    backend = RecordingBackend(tmp_path / "bucket")
    local = make_adapter(tmp_path / "scratch" / "k1", 1)
    prefix = f"{served_prefix('team-a', 'support')}/alice/abc123"
    assert prefix == "served/team-a/support/alice/abc123"

    assert publish_adapter(backend, local, prefix) is True
    keys = [b.key for b in backend.list("served/")]
    assert sorted(keys) == sorted(f"{prefix}/{n}" for n in
                                  ("adapter_config.json", "adapter_model.safetensors", "composition.json",
                                   COMPLETE_MARKER))  # fmt: skip
    assert backend.writes[-1] == f"{prefix}/{COMPLETE_MARKER}" and len(backend.writes) == 4
    marker = parse_marker(backend.get_bytes(f"{prefix}/{COMPLETE_MARKER}"), "m")
    assert set(marker) == {"adapter_config.json", "adapter_model.safetensors", "composition.json"}
    assert marker["adapter_model.safetensors"][1] == 4096

    backend.writes.clear()
    assert publish_adapter(backend, local, prefix) is False  # content-addressed key: already there
    assert backend.writes == []


def test_publish_refuses_a_folder_that_is_not_an_adapter(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match=r"adapter_config\.json missing"):
        publish_adapter(FsBackend(tmp_path / "bucket"), tmp_path / "empty", "served/n/s/a/k")
    assert not (tmp_path / "bucket" / "served").exists()


def test_pod_path_and_uri_parsing() -> None:
    assert pod_adapter_path("alice", "abc") == "/adapters/alice/abc"
    assert pod_adapter_path("alice", "abc", "/tmp/d/") == "/tmp/d/alice/abc"
    with pytest.raises(ValueError, match="served in place, not mirrored"):
        remote_backend("file:///data/ckpt")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        # vLLM 0.32's answer to a load whose path does not exist (LoRAAdapterNotFoundError).
        (404, b'{"error": {"message": "Loading lora a failed: No adapter found for /adapters/a/k", '
              b'"type": "NotFoundError", "param": null, "code": 404}}', True),
        (404, b'{"detail": "Not Found"}', False),  # endpoint missing: runtime LoRA updating is off
        (500, b'{"error": {"message": "boom", "type": "InternalServerError", "code": 500}}', False),
        (400, b'{"error": {"message": "bad", "type": "BadRequestError", "code": 400}}', False),
    ],
)
def test_not_synced_classification(status: int, body: bytes, expected: bool) -> None:
    err = parse_error(status, body, url="http://p/v1/load_lora_adapter")
    assert is_not_synced(err) is expected
    assert not is_not_synced(VLLMServerError("x", status=500)) and not is_not_synced(VLLMBadRequest("x"))


def test_marker_validation() -> None:
    with pytest.raises(StoreError, match=r"invalid marker s3://b/m"):
        parse_marker(b"{}", "s3://b/m")
    bad = json.dumps({"format": "dynamiclora.served/v1", "files": {"../x": {"sha256": "0", "size": 1}}})
    with pytest.raises(StoreError, match="bad file name"):
        parse_marker(bad.encode(), "m")


def test_mirror_complete_only_atomic_and_prunes(tmp_path: Path) -> None:
    backend = FsBackend(tmp_path / "bucket")
    source = served_prefix("ns", "sw")
    dest = tmp_path / "adapters"
    publish_adapter(backend, make_adapter(tmp_path / "l1", 1), f"{source}/alice/k1")
    publish_adapter(backend, make_adapter(tmp_path / "l2", 2), f"{source}/bob/k2")
    # An interrupted upload: files but no marker. It must never appear in dest.
    backend.put_file(f"{source}/carol/k3/adapter_config.json", tmp_path / "l1" / "adapter_config.json")
    mirror = AdapterMirror(backend, source, dest)

    first = mirror.sync_once()
    assert first.synced == ["alice/k1", "bob/k2"] and not first.errors
    assert sorted(p.name for p in dest.iterdir()) == ["alice", "bob"]
    got = dest / "alice" / "k1" / "adapter_model.safetensors"
    assert got.read_bytes() == (tmp_path / "l1" / "adapter_model.safetensors").read_bytes()
    assert not list(dest.rglob(".sync-*"))

    again = mirror.sync_once()
    assert (again.synced, again.removed, again.present) == ([], [], ["alice/k1", "bob/k2"])

    for info in backend.list(f"{source}/bob/"):
        backend.delete(info.key)
    pruned = mirror.sync_once()
    assert pruned.removed == ["bob/k2"] and not (dest / "bob").exists()
    assert (dest / "alice" / "k1" / "adapter_config.json").is_file()


class CorruptingBackend(FsBackend):
    """A fake for a fault S3 cannot be made to produce on demand: a body that differs from the marker."""

    def get_to_file(self, key: str, dest: Path) -> None:
        super().get_to_file(key, dest)
        if key.endswith(".safetensors"):
            dest.write_bytes(b"corrupt")


def test_mirror_rejects_checksum_mismatch_without_partial_folder(tmp_path: Path) -> None:
    backend = CorruptingBackend(tmp_path / "bucket")
    source = served_prefix("ns", "sw")
    publish_adapter(backend, make_adapter(tmp_path / "l1", 1), f"{source}/alice/k1")
    dest = tmp_path / "adapters"
    report = AdapterMirror(backend, source, dest).sync_once()
    assert report.synced == [] and "alice/k1" in report.errors
    assert "adapter_model.safetensors" in report.errors["alice/k1"] and "differ" in report.errors["alice/k1"]
    assert list((dest / "alice").iterdir()) == []  # the temporary folder is gone, nothing half-written


def test_mirror_cleans_stale_temporaries_only(tmp_path: Path) -> None:
    dest = tmp_path / "adapters"
    for name in (".sync-k1-dead", ".sync-k1-busy"):
        (dest / "alice" / name).mkdir(parents=True)
        (dest / "alice" / name / "adapter_config.json").write_text("{}")
    old = time.time() - STALE_TMP_S - 60
    os.utime(dest / "alice" / ".sync-k1-dead", (old, old))
    AdapterMirror(FsBackend(tmp_path / "bucket"), "served/ns/sw", dest).sync_once()
    assert not (dest / "alice" / ".sync-k1-dead").exists()  # a crashed pass's leftover
    assert (dest / "alice" / ".sync-k1-busy").exists()  # may be another mirror's download in progress
    with pytest.raises(ValueError, match="--source"):
        AdapterMirror(FsBackend(tmp_path / "bucket"), "/", dest)


def test_failing_pass_is_retried_a_bounded_number_of_times(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")  # dest cannot be created: every pass fails
    mirror = AdapterMirror(FsBackend(tmp_path / "bucket"), "served/ns/sw", tmp_path / "not-a-dir" / "d")
    calls: list[int] = []
    original = mirror.sync_once

    def counted() -> SyncReport:
        calls.append(1)
        return original()

    mirror.sync_once = counted  # type: ignore[method-assign]
    report = _pass_with_retries(mirror, retries=2, backoff_s=0.01)
    assert len(calls) == 3 and "<listing>" in report.errors and "not-a-dir" in report.errors["<listing>"]


def test_prune_remote_keeps_current_and_newest(tmp_path: Path) -> None:
    backend = FsBackend(tmp_path / "bucket")
    src = served_prefix("ns", "sw")
    for i in range(5):  # alice's versions k0 (oldest) .. k4 (newest)
        publish_adapter(backend, make_adapter(tmp_path / f"a{i}", i), f"{src}/alice/k{i}")
        marker = tmp_path / "bucket" / src / "alice" / f"k{i}" / COMPLETE_MARKER
        os.utime(marker, (1_000_000 + i, 1_000_000 + i))
    publish_adapter(backend, make_adapter(tmp_path / "gone", 9), f"{src}/zed/k9")  # agent left the swarm
    backend.put_file(f"{src}/alice/dead/adapter_config.json", tmp_path / "a0" / "adapter_config.json")

    # Written just now, the unmarked key may be another pass's upload in flight: it stays until it is old.
    assert sorted(prune_remote(backend, src, current={"alice": "k0"}, agents={"alice"}, keep_last=2)) == [
        "alice/k1", "alice/k2", "zed/k9"]
    later = time.time() + UPLOAD_GRACE_SECONDS + 1
    deleted = prune_remote(backend, src, current={"alice": "k0"}, agents={"alice"}, keep_last=2, now=later)
    assert sorted(deleted) == ["alice/dead"]
    left = {b.key.split("/")[4] for b in backend.list(src + "/")}
    assert left == {"k0", "k3", "k4"}  # current (even if old) + the two newest
    assert prune_remote(backend, src, current={"alice": "k0"}, agents={"alice"}, keep_last=2, now=later) == []

    agent_dir = tmp_path / "scratch" / "alice"
    for name in ("k0", "k3", ".k5-inflight"):
        (agent_dir / name).mkdir(parents=True)
    prune_scratch(agent_dir, "k3")
    assert sorted(p.name for p in agent_dir.iterdir()) == [".k5-inflight", "k3"]


def test_fetch_published_restores_the_served_bytes(tmp_path: Path) -> None:
    backend = FsBackend(tmp_path / "bucket")
    src = served_prefix("ns", "sw")
    original = make_adapter(tmp_path / "orig", 3)
    publish_adapter(backend, original, f"{src}/alice/k3")
    scratch = tmp_path / "scratch" / "ns" / "sw"
    assert fetch_published(backend, src, scratch, "alice", "k4") is False  # never published: compose it
    assert not (scratch / "alice" / "k4").exists()
    assert fetch_published(backend, src, scratch, "alice", "k3") is True
    for name in ("adapter_config.json", "adapter_model.safetensors", "composition.json"):
        assert (scratch / "alice" / "k3" / name).read_bytes() == (original / name).read_bytes()


def test_two_mirrors_sharing_one_folder(tmp_path: Path) -> None:
    backend = FsBackend(tmp_path / "bucket")
    src = served_prefix("ns", "sw")
    publish_adapter(backend, make_adapter(tmp_path / "l1", 1), f"{src}/alice/k1")
    dest = tmp_path / "shared"
    first, second = AdapterMirror(backend, src, dest), AdapterMirror(backend, src, dest)
    # Both saw the adapter missing; the second finishes its download after the first renamed it in.
    assert first.download("alice", "k1") > 0 and second.download("alice", "k1") > 0
    assert sorted(p.name for p in (dest / "alice").iterdir()) == ["k1"]
    for info in backend.list(src + "/"):
        backend.delete(info.key)
    first.remove("alice", "k1")
    second.remove("alice", "k1")  # already gone: not an error
    assert second.sync_once().removed == [] and not (dest / "alice").exists()
