"""Leader election with a ``coordination.k8s.io`` Lease: one operator reconciles, the others wait.

Two operators reconciling at once (a second replica, a rolling update, a partitioned pod that has not
noticed it was replaced) would launch duplicate Jobs and write status over each other. The leader holds a
Lease in its own namespace and renews it every ``renew_s``; the others keep watching it and take over
once it has not changed for ``duration_s``.

Expiry is judged on the follower's own monotonic clock, from the moment it *saw* the Lease change (its
resourceVersion), never from the ``renewTime`` the holder wrote: clocks need not agree (client-go's
approach). Writes carry the resourceVersion they read, so two candidates never both win. A leader that
fails to renew within ``duration_s`` stops leading (the process exits and is restarted as a follower);
one that stops cleanly releases the Lease so that a follower takes over at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dynamiclora.kube import KubeError, Obj
from dynamiclora.metrics import LEADER

log = logging.getLogger("dynamiclora.leader")


class LeaseClient(Protocol):
    def get_lease(self, namespace: str, name: str) -> Obj | None: ...

    def write_lease(self, lease: Obj) -> Obj | None: ...


@dataclass
class Leadership:
    """This operator's standing in the election (``leader`` is what the reconcilers check)."""

    client: LeaseClient
    namespace: str
    identity: str
    name: str = "dynamiclora-operator"
    duration_s: float = 15.0
    renew_s: float = 5.0
    leader: bool = False
    clock: Callable[[], float] = time.monotonic
    _seen: tuple[str, float] = field(default=("", 0.0), init=False)  # (resourceVersion, when we saw it)
    _renewed: float = field(default=0.0, init=False)

    def try_acquire(self) -> bool:
        """Take or renew the Lease if it is free, expired or ours; returns whether we hold it now."""
        now = self.clock()
        lease = self.client.get_lease(self.namespace, self.name)
        if lease is None:
            return self._write(self._lease({}, transitions=0), now)
        spec = lease.get("spec") or {}
        version = str(lease["metadata"].get("resourceVersion", ""))
        if version != self._seen[0]:
            self._seen = (version, now)
        holder = spec.get("holderIdentity") or ""
        expired = now - self._seen[1] > float(spec.get("leaseDurationSeconds") or self.duration_s)
        if holder not in ("", self.identity) and not expired:
            self.set_leader(False)  # another operator leads (or took over after we failed to renew)
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        return self._write(self._lease(lease, transitions, spec.get("acquireTime") if holder == self.identity
                                       else None), now)  # fmt: skip

    def lost(self) -> bool:
        """Whether a leader has gone ``duration_s`` without a successful renewal (another may lead now)."""
        return self.leader and self.clock() - self._renewed > self.duration_s

    def release(self) -> None:
        """Give the Lease up (on a clean stop), so that a follower need not wait for it to expire.

        Best effort: at shutdown with the API server unreachable there is nothing better to do than to
        stop (a follower takes over when the Lease expires). Raising here kept a stopping operator alive,
        its shutdown retrying the release every minute.
        """
        if not self.leader:
            return
        try:
            lease = self.client.get_lease(self.namespace, self.name)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                self.client.write_lease(lease)
        except Exception as exc:  # the kubernetes client raises urllib3's errors as well as ApiException
            log.warning("could not release the Lease (%s): a follower takes over when it expires", exc)
        self.set_leader(False)

    def _lease(self, current: Obj, transitions: int, acquired: str | None = None) -> Obj:
        meta = {"name": self.name, "namespace": self.namespace}
        if current:
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # MicroTime: microseconds required
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.duration_s)),
                "acquireTime": acquired or now, "renewTime": now, "leaseTransitions": transitions}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def _write(self, lease: Obj, now: float) -> bool:
        written = self.client.write_lease(lease)
        if written is None:  # another candidate wrote first: judge its record on the next round
            return False
        self._seen = (str(written["metadata"].get("resourceVersion", "")), now)
        self._renewed = now
        self.set_leader(True)
        return True

    def set_leader(self, leader: bool) -> None:
        """Record (log once, export) whether this operator leads."""
        if leader != self.leader:
            log.warning("%s leader election as %s (Lease %s/%s)", "won" if leader else "left", self.identity,
                        self.namespace, self.name)  # fmt: skip
        self.leader = leader
        LEADER.set(1 if leader else 0)


async def hold(leadership: Leadership, on_lost: Callable[[], None]) -> None:
    """Campaign until elected, then renew; call ``on_lost`` once leadership cannot be kept."""
    announced = False
    while True:
        was_leader = leadership.leader
        try:
            await asyncio.to_thread(leadership.try_acquire)
        except KubeError as exc:  # the API server is unreachable: keep trying until the Lease expires
            log.warning("leader election: %s", exc)
        if was_leader and (not leadership.leader or leadership.lost()):
            log.error("lost the leader Lease %s/%s (not renewed within %.0fs, or taken over): stopping",
                      leadership.namespace, leadership.name, leadership.duration_s)  # fmt: skip
            leadership.set_leader(False)
            on_lost()
            return
        if not leadership.leader and not announced:
            log.warning("waiting for the leader Lease %s/%s (another operator leads)", leadership.namespace,
                        leadership.name)  # fmt: skip
            announced = True
        await asyncio.sleep(leadership.renew_s if leadership.leader else leadership.renew_s / 2)
