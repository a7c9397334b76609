"""The one registry of storage URI schemes: every way the operator and the Jobs reach bytes goes through it.

A scheme gives, for a location URI, a :class:`~dynamiclora.storage.base.BlobBackend` rooted there
(checkpoints, Job results, served adapters, the audit trail, ``history``) and a
:class:`~dynamiclora.storage.base.RecordSource` (interaction records and regression sets, as the operator
counts them and the Jobs read them). A new backend is one module with those two classes plus one
:func:`register_scheme` call below; nothing else branches on a scheme.

``local`` schemes are files this process opens directly (the operator and the Jobs mount storage PVCs
at the same root), so callers may check or write their paths themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from dynamiclora.storage.base import BlobBackend, RecordSource
from dynamiclora.storage.fs import FsBackend, FsRecordSource
from dynamiclora.storage.s3 import S3Backend, S3RecordSource, s3_client_from_env


@dataclass(frozen=True)
class Location:
    """A parsed location URI: ``file:///abs/path`` (or a plain absolute path), ``s3://bucket/key``."""

    uri: str
    scheme: str
    bucket: str  # the URI's authority ("" for file)
    path: str  # an absolute path for file, a key (no leading "/") for s3


@dataclass(frozen=True)
class Scheme:
    """What one URI scheme provides. ``client`` is the scheme's own client (an S3 client), or None."""

    name: str
    local: bool
    blobs: Callable[[Location, Any], BlobBackend]
    records: Callable[[Location, Any], RecordSource]
    parse: Callable[[str], Location]


SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> None:
    """Register ``scheme`` (once per name)."""
    if scheme.name in SCHEMES:
        raise ValueError(f"storage scheme {scheme.name!r} is registered twice")
    SCHEMES[scheme.name] = scheme


def _scheme_name(uri: str) -> str:
    name = urlparse(uri).scheme
    return "file" if name == "" else name


def scheme_of(uri: str) -> Scheme:
    """The scheme of ``uri``.

    Raises:
        ValueError: the scheme is not registered (the message lists those that are).
    """
    name = _scheme_name(uri)
    if name not in SCHEMES:
        known = ", ".join(f"{n}://" for n in sorted(SCHEMES))
        raise ValueError(f"location {uri!r}: unsupported scheme {name!r} (use {known})")
    return SCHEMES[name]


def location(uri: str) -> Location:
    """``uri`` parsed by its scheme; ValueError naming the URI when it is malformed."""
    return scheme_of(uri).parse(uri)


def blob_backend(uri: str, client: Any = None) -> BlobBackend:
    """Objects below ``uri`` (a store root, a folder of results, a swarm's served adapters)."""
    return scheme_of(uri).blobs(location(uri), client)


def record_source(uri: str, client: Any = None) -> RecordSource:
    """The records objects at ``uri`` (one object, or every ``*.jsonl`` one below a folder or prefix)."""
    return scheme_of(uri).records(location(uri), client)


def local_path(uri: str) -> Path | None:
    """The path of ``uri`` on this machine when its scheme is local, else None."""
    return Path(location(uri).path) if scheme_of(uri).local else None


def _parse_file(uri: str) -> Location:
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
        raise ValueError(f"location {uri!r}: file URIs need an absolute path (file:///path)")
    path = unquote(parsed.path) if parsed.scheme else uri
    if not path.startswith("/"):
        raise ValueError(f"location {uri!r}: the path must be absolute")
    return Location(uri, "file", "", path)


def _parse_s3(uri: str) -> Location:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise ValueError(f"location {uri!r}: missing bucket (s3://BUCKET/KEY)")
    return Location(uri, "s3", parsed.netloc, parsed.path.lstrip("/"))


def _fs_blobs(loc: Location, client: Any) -> BlobBackend:
    return FsBackend(loc.path)


def _fs_records(loc: Location, client: Any) -> RecordSource:
    return FsRecordSource(loc.path)


def _s3_client(client: Any) -> Any:
    if client is not None:
        return client
    return s3_client_from_env()


def _s3_blobs(loc: Location, client: Any) -> BlobBackend:
    return S3Backend(loc.bucket, loc.path.strip("/"), client=_s3_client(client))


def _s3_records(loc: Location, client: Any) -> RecordSource:
    return S3RecordSource(loc.bucket, loc.path, _s3_client(client))


register_scheme(Scheme("file", local=True, blobs=_fs_blobs, records=_fs_records, parse=_parse_file))
register_scheme(Scheme("s3", local=False, blobs=_s3_blobs, records=_s3_records, parse=_parse_s3))
