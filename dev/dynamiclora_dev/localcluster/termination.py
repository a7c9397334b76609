"""Container termination messages, computed the way the kubelet does.

The container's ``terminationMessagePath`` (default ``/dev/termination-log``) is a per-container file
locally; :func:`dynamiclora_dev.localcluster.podspec.launch` rewrites the path to it. When the container
exits with an error, wrote nothing there and asks for ``FallbackToLogsOnError``, the tail of its log is
used instead. Limits are the kubelet's (``pkg/kubelet/container/runtime.go``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_PATH = "/dev/termination-log"
MAX_FILE_BYTES = 4096  # MaxContainerTerminationMessageLength
MAX_LOG_BYTES = 2048  # MaxContainerTerminationMessageLogLength
MAX_LOG_LINES = 80  # MaxContainerTerminationMessageLogLines


def message_path(container: Mapping[str, Any]) -> str:
    """Where the container writes its termination message, as the container sees it."""
    return str(container.get("terminationMessagePath") or DEFAULT_PATH)


def local_message_file(pod_dir: Path, container: Mapping[str, Any]) -> Path:
    """The local file that stands in for the container's termination-message path."""
    return pod_dir / f"{container['name']}.termination-log"


def _tail_bytes(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(size - limit, 0))
            return fh.read()
    except OSError:
        return b""


def termination_message(container: Mapping[str, Any], exit_code: int, message_file: Path, log_path: Path) -> str:
    """The ``state.terminated.message`` of a container that exited with ``exit_code``."""
    text = _tail_bytes(message_file, MAX_FILE_BYTES)
    if text or exit_code == 0 or container.get("terminationMessagePolicy") != "FallbackToLogsOnError":
        return text.decode(errors="replace")
    return log_tail(log_path)


def log_tail(log_path: Path, lines: int = MAX_LOG_LINES, limit: int = MAX_LOG_BYTES) -> str:
    """The last ``lines`` lines of a log, then at most its last ``limit`` bytes (a ring buffer's view)."""
    # Reading a bounded window keeps a multi-gigabyte training log cheap; 80 lines rarely exceed it.
    window = _tail_bytes(log_path, max(limit * 64, 1 << 16))
    kept = b"".join(window.splitlines(keepends=True)[-lines:])
    return kept[-limit:].decode(errors="replace")
