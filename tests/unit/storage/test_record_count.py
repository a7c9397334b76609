"""Counting interaction records on a folder and on S3 (moto server on loopback), and the per-object cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.storage.record_count import LineCounts, RecordCountError, count_lines, count_records

FILES = {
    "a.jsonl": b'{"r": 1}\n{"r": 2}\n\n   \n{"r": 3}',  # blank and whitespace-only lines are not records
    "day/b.jsonl": b'{"r": 4}\r\n{"r": 5}\r\n',
    "notes.txt": b"not\nrecords\n",
    "c.jsonl.bak": b'{"r": 6}\n',
}


@pytest.fixture(params=["fs", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Callable[[str, bytes], None], Any]:
    """A records location on each backend, a writer of its objects, and the S3 client (None on a folder)."""
    if request.param == "fs":
        root = tmp_path / "interactions" / "bob"

        def write_fs(name: str, data: bytes) -> None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)

        return str(root), write_fs, None
    client, bucket = request.getfixturevalue("s3_client"), request.getfixturevalue("s3_bucket")

    def write_s3(name: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=f"dl/interactions/bob/{name}", Body=data)

    return f"s3://{bucket}/dl/interactions/bob", write_s3, client


def test_counts_non_empty_lines_of_jsonl_objects(location: tuple[str, Callable[[str, bytes], None], Any]) -> None:
    uri, write, client = location
    assert count_records(uri, s3_client=client, cache=LineCounts()) == 0  # nothing written yet
    for name, data in FILES.items():
        write(name, data)
    assert count_records(uri, s3_client=client, cache=LineCounts()) == 5


def test_a_sibling_prefix_is_not_counted(s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="dl/interactions/bob/a.jsonl", Body=b"{}\n")
    s3_client.put_object(Bucket=s3_bucket, Key="dl/interactions/bobby/a.jsonl", Body=b"{}\n{}\n")
    assert count_records(f"s3://{s3_bucket}/dl/interactions/bob", s3_client=s3_client, cache=LineCounts()) == 1


def _gets(client: Any) -> list[str]:
    """The keys of every GetObject the client sends from now on."""
    keys: list[str] = []
    client.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **_: keys.append(params["Key"]))
    return keys


def test_unchanged_s3_objects_are_not_downloaded_again(s3_client: Any, s3_bucket: str) -> None:
    uri, cache = f"s3://{s3_bucket}/dl/interactions/bob", LineCounts()
    for name in ("a.jsonl", "b.jsonl"):
        s3_client.put_object(Bucket=s3_bucket, Key=f"dl/interactions/bob/{name}", Body=b"{}\n{}\n")
    gets = _gets(s3_client)
    assert count_records(uri, s3_client=s3_client, cache=cache) == 4
    assert sorted(gets) == ["dl/interactions/bob/a.jsonl", "dl/interactions/bob/b.jsonl"]

    gets.clear()
    assert count_records(uri, s3_client=s3_client, cache=cache) == 4
    assert gets == []  # one listing, no downloads

    s3_client.put_object(Bucket=s3_bucket, Key="dl/interactions/bob/b.jsonl", Body=b"{}\n{}\n{}\n")  # rewritten
    s3_client.put_object(Bucket=s3_bucket, Key="dl/interactions/bob/c.jsonl", Body=b"{}\n")  # new
    assert count_records(uri, s3_client=s3_client, cache=cache) == 6
    assert sorted(gets) == ["dl/interactions/bob/b.jsonl", "dl/interactions/bob/c.jsonl"]


def test_appended_file_is_counted_again(tmp_path: Path) -> None:
    cache = LineCounts()
    f = tmp_path / "a.jsonl"
    f.write_bytes(b"{}\n")
    assert count_records(str(tmp_path), cache=cache) == 1
    with f.open("ab") as fh:
        fh.write(b"{}\n{}\n")
    assert count_records(f"file://{tmp_path}", cache=cache) == 3


@pytest.mark.usefixtures("s3_env")
def test_objects_over_the_limit_are_refused_by_name(location: tuple[str, Callable[[str, bytes], None], Any]) -> None:
    uri, write, client = location
    write("small.jsonl", b"{}\n")
    write("big.jsonl", b"{}\n" * 100)
    with pytest.raises(RecordCountError, match=r"big\.jsonl has 300 bytes, more than the 100"):
        count_records(uri, s3_client=client, max_object_bytes=100, cache=LineCounts())


def test_unreadable_bucket_is_a_record_count_error(s3_client: Any) -> None:
    with pytest.raises(RecordCountError, match=r"listing s3://no-such-bucket-x/dl/ failed: .*NoSuchBucket"):
        count_records("s3://no-such-bucket-x/dl", s3_client=s3_client, cache=LineCounts())


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
def test_line_count_does_not_depend_on_chunking(size: int) -> None:
    data = b'{"a": 1}\n\n  \n{"b": 2}\r\n{"c": 3}'
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    assert count_lines(chunks) == 3 == sum(1 for line in data.split(b"\n") if line.strip())


def test_cache_is_bounded() -> None:
    from dynamiclora.storage.record_count import RecordObject

    cache = LineCounts(max_entries=2)
    objs = [RecordObject(f"s3://b/{i}.jsonl", f"{i}.jsonl", 1, f"e{i}:1") for i in range(3)]
    for i, o in enumerate(objs):
        cache.put(o, i)
    assert [cache.get(o) for o in objs] == [None, 1, 2]
