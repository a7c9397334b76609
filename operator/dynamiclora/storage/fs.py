"""Filesystem backend (a PVC mount or a local directory).

Atomicity comes from the filesystem: files are written to a temporary name in the same directory,
fsynced and renamed; create-if-absent writes a complete temporary file and hard-links it to the final
name (``link`` fails with ``EEXIST`` when the name exists, so exactly one writer wins and readers never
see a partial object). Filesystems without hard links (common for ReadWriteMany volumes) take the name
with an exclusive ``mkdir`` of ``<name>.taken`` and then rename the complete temporary file onto it: the
name is never visible half-written, and a writer that dies in between leaves the name taken but absent
(a version number is skipped, nothing half-published is ever read).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from dynamiclora.storage.base import (
    READ_CHUNK,
    RECORDS_SUFFIX,
    BlobInfo,
    BlobNotFoundError,
    RecordObject,
    StoreError,
    sha256_file,
)

_TMP_MARK = ".tmp-"
_TAKEN = ".taken"  # suffix of the directory that reserves a name on filesystems without hard links


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def _remove_reservation(path: Path) -> None:
    # None exists when hard links were available; a non-empty one is not a reservation.
    with contextlib.suppress(OSError):
        path.with_name(path.name + _TAKEN).rmdir()


def _is_leftover(p: Path) -> bool:
    """A crashed writer's temporary file or a name reservation: neither is an object."""
    return (p.name.startswith(".") and _TMP_MARK in p.name) or (p.name.endswith(_TAKEN) and p.is_dir())


class FsBackend:
    """Objects as files under ``root``; keys map to relative paths."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root_uri = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def describe(self, key: str) -> str:
        """``file://`` URI of a key."""
        return f"{self.root_uri}/{key}"

    def _tmp(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.parent / f".{final.name}{_TMP_MARK}{uuid.uuid4().hex[:12]}"

    def put_file(self, key: str, src: Path) -> None:
        """Copy ``src`` to ``key`` atomically and verify the copy's sha256."""
        final = self._path(key)
        tmp = self._tmp(final)
        try:
            with src.open("rb") as fin, tmp.open("wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            if sha256_file(tmp) != sha256_file(src):
                raise StoreError(f"verification of {self.describe(key)} failed: copy differs from {src}")
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent; the content is complete when the name appears."""
        final = self._path(key)
        tmp = self._tmp(final)
        try:
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                return self._rename_exclusive(tmp, final)
            _fsync_dir(final.parent)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _rename_exclusive(tmp: Path, final: Path) -> bool:
        """Without hard links: reserve the name with an exclusive mkdir, then rename the complete file onto it."""
        try:
            os.mkdir(final.with_name(final.name + _TAKEN))
        except FileExistsError:
            return False
        if final.exists():  # written by a writer that still used hard links
            return False
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return True

    def get_bytes(self, key: str) -> bytes:
        """Read a key."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as e:
            raise BlobNotFoundError(f"{self.describe(key)} does not exist") from e

    def get_to_file(self, key: str, dest: Path) -> None:
        """Copy a key to a local file."""
        try:
            shutil.copyfile(self._path(key), dest)
        except FileNotFoundError as e:
            raise BlobNotFoundError(f"{self.describe(key)} does not exist") from e

    def list(self, prefix: str) -> list[BlobInfo]:
        """Every file under the directory part of ``prefix`` whose key starts with ``prefix``."""
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*base_key.split("/")) if base_key else self.root
        out: list[BlobInfo] = []
        if not base.is_dir():
            return out
        for dirpath, _dirs, names in os.walk(base):
            for name in names:
                if name.startswith(".") and _TMP_MARK in name:
                    continue  # an in-flight or abandoned temporary file, not an object
                p = Path(dirpath) / name
                key = p.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue  # deleted while listing
                out.append(BlobInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        return sorted(out, key=lambda b: b.key)

    def delete(self, key: str) -> None:
        """Delete a key and prune empty parent directories up to the root."""
        path = self._path(key)
        path.unlink(missing_ok=True)
        _remove_reservation(path)
        parent = path.parent
        while parent != self.root and parent.is_dir():
            # Remove stale temporaries and reservations of crashed writers too, only in a directory being emptied.
            leftovers = list(parent.iterdir())
            if leftovers and all(_is_leftover(p) for p in leftovers):
                for p in leftovers:
                    _remove_reservation(p.with_name(p.name.removesuffix(_TAKEN)))
                    if not p.is_dir():
                        p.unlink(missing_ok=True)
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


class FsRecordSource:
    """Records files below a folder (the operator mounts the storage PVCs where the Jobs do)."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def objects(self) -> list[RecordObject]:
        out = []
        found = [self.root] if self.root.is_file() else sorted(self.root.rglob(f"*{RECORDS_SUFFIX}"))
        for p in found:
            try:
                st = p.stat()
            except FileNotFoundError:
                continue  # deleted while listing
            if p.is_file():
                out.append(RecordObject(str(p), str(p), st.st_size, f"{st.st_size}:{st.st_mtime_ns}"))
        return out

    def chunks(self, obj: RecordObject) -> Iterator[bytes]:
        try:
            with open(obj.key, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    yield chunk
        except FileNotFoundError:
            return  # deleted since listed: it has no records any more
