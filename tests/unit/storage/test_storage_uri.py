"""Store URIs, tier references, manifests and names (pure, no I/O beyond tmp_path)."""

from __future__ import annotations

import pytest

from dynamiclora.storage import ChecksumMismatchError, Manifest, StoreError, open_store, parse_tier_ref
from dynamiclora.storage.base import FileEntry, parse_version_dir, validate_name, version_dir


def test_tier_refs_parse_with_and_without_version() -> None:
    ref = parse_tier_ref("s3://bucket/deep/prefix/team-a/alice-context/v000007")
    assert (ref.store_uri, ref.namespace, ref.tier, ref.version) == (
        "s3://bucket/deep/prefix", "team-a", "alice-context", 7)
    assert str(ref) == "s3://bucket/deep/prefix/team-a/alice-context/v000007"
    latest = parse_tier_ref("file:///data/ckpt/team-a/shared@latest")
    assert (latest.store_uri, latest.namespace, latest.tier, latest.version) == (
        "file:///data/ckpt", "team-a", "shared", None)


@pytest.mark.parametrize("bad", ["s3://team/tier", "team/tier", "file:///tier", "http://x/ns/tier", "s3://b/ns/t t"])
def test_bad_tier_refs_are_explained(bad: str) -> None:
    with pytest.raises(ValueError, match="tier reference"):
        parse_tier_ref(bad)


@pytest.mark.parametrize(("uri", "fragment"), [
    ("gs://bucket/x", "unsupported scheme 'gs'"),
    ("relative/path", "the path must be absolute"),
    ("s3:///prefix", "missing bucket"),
    ("file://host/path", "file URIs need an absolute path"),
])
def test_bad_store_uris_are_explained(uri: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        open_store(uri)


def test_version_names_round_trip() -> None:
    assert version_dir(7) == "v000007" and parse_version_dir("v000007") == 7
    assert parse_version_dir("v1234567") == 1234567
    assert parse_version_dir("v7") is None and parse_version_dir("latest") is None
    with pytest.raises(ValueError):
        version_dir(0)
    with pytest.raises(ValueError, match="invalid namespace"):
        validate_name("namespace", "..")


def test_manifest_round_trip_and_tamper_detection() -> None:
    m = Manifest("ns", "t", 3, "2025-01-01T00:00:00Z", {"a.bin": FileEntry("ab" * 32, 5)}, {"k": [1, 2]}, "w")
    again = Manifest.from_json(m.to_json(), "mem://m")
    assert again == m and again.digest == m.digest
    tampered = m.to_json().replace(b'"size": 5', b'"size": 6')
    with pytest.raises(ChecksumMismatchError, match="digest does not match"):
        Manifest.from_json(tampered, "mem://m")
    with pytest.raises(StoreError, match="invalid manifest mem://m"):
        Manifest.from_json(b"{}", "mem://m")
