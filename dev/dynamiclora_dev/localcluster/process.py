"""Child processes that can always be stopped: own process group, log file, parent-death signal.

Every process the local cluster starts (control-plane components and the pods the executor runs) gets
its own process group so that stopping it also stops whatever it forked (vLLM starts an engine-core
child, for instance), and a parent-death signal so that it does not outlive its parent even when the
parent is killed with SIGKILL. The parent-death signal fires when the *thread* that forked exits, so
callers start processes from a long-lived thread (the supervisor's main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1
try:  # loaded once here so that the child does as little as possible between fork and exec
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - not glibc
    _LIBC = None


def _child_setup() -> None:
    """Runs in the child between fork and exec: ask the kernel to SIGKILL us when the parent dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def owned_by(pid: int, marker: str) -> bool:
    """True when process ``pid`` mentions ``marker`` (a state folder) in its command line or env.

    Used before killing a process recorded in a pid file, so a reused pid is never killed.
    """
    for name in ("cmdline", "environ"):
        try:
            if marker.encode() in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
        except OSError:
            continue
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def group_alive(pgid: int) -> bool:
    """True when at least one process of the process group ``pgid`` still exists (zombies excluded)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        rest = stat.rsplit(")", 1)[1].split()
        if rest[0] != "Z" and int(rest[2]) == pgid:
            return True
    return False


def kill_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if anything is left after ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        except PermissionError:  # pragma: no cover - the group was reused by someone else
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, also those that left its process group (``setsid``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent pid is the second field after the parenthesised command name.
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it, as a container runtime kills a container: torchrun starts
    its workers in sessions of their own, so killing the process group alone leaves them running."""
    for target in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)


@dataclass
class ManagedProcess:
    """One started child with its log file.

    Attributes:
        name: Human name used in messages ("kube-apiserver", "default/train-x/trainer").
        popen: The running process; its pid is also its process-group id.
        log_path: Where stdout and stderr go.
    """

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """Process id (and process-group id) of the child."""
        return self.popen.pid

    def poll(self) -> int | None:
        """Exit code, or None while running."""
        return self.popen.poll()

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the whole process group and reap the child; returns its exit code."""
        kill_group(self.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.popen.poll()

    def tail(self, lines: int = 30) -> str:
        """The last lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start_process(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    pdeathsig: bool = True,
) -> ManagedProcess:
    """Start ``argv`` in a new session with stdout+stderr appended to ``log_path``.

    ``pdeathsig=False`` lets the child outlive this process (``dynamiclora-dev cluster up``).

    Raises:
        FileNotFoundError: the executable does not exist (message names it and the process).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}: {' '.join(argv)}\n".encode())
    log.flush()
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd is not None else None,
            start_new_session=True,
            preexec_fn=_child_setup if pdeathsig else None,
        )
    except OSError as exc:
        log.close()
        if exc.errno in (errno.ENOENT, errno.EACCES):
            raise FileNotFoundError(f"{name}: cannot execute {argv[0]!r}: {exc.strerror}") from exc
        raise
    return ManagedProcess(name=name, popen=popen, log_path=log_path, _log=log)
