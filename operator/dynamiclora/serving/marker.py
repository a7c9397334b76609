"""The COMPLETE marker of a published adapter: written last, it lists every file with its sha256 and size.

Shared by the writer (``served_s3``, the compose Job) and the readers (the adapter-sync sidecar, the
operator restoring its scratch copy), so both agree on one format.
"""

from __future__ import annotations

import json
from pathlib import Path

from dynamiclora.storage.base import StoreError, sha256_file

COMPLETE_MARKER = "COMPLETE"
MARKER_FORMAT = "dynamiclora.served/v1"


def marker_bytes(files: dict[str, Path]) -> bytes:
    """The COMPLETE marker: format and the sha256/size of every file of the adapter."""
    entries = {}
    for name, path in sorted(files.items()):
        digest, size = sha256_file(path)
        entries[name] = {"sha256": digest, "size": size}
    return json.dumps({"format": MARKER_FORMAT, "files": entries}, indent=2, sort_keys=True).encode()


def parse_marker(data: bytes, where: str) -> dict[str, tuple[str, int]]:
    """File name -> (sha256, size) from a COMPLETE marker read from ``where``.

    Raises:
        StoreError: naming ``where`` when the marker is not valid.
    """
    try:
        doc = json.loads(data)
        if doc.get("format") != MARKER_FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        out = {str(n): (str(e["sha256"]), int(e["size"])) for n, e in doc["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise StoreError(f"invalid marker {where}: {e}") from e
    for name in out:
        if "/" in name or name in ("", ".", "..", COMPLETE_MARKER):
            raise StoreError(f"invalid marker {where}: bad file name {name!r}")
    return out
