"""Versions published by anyone, noticed at once (issue 19: event-driven freshness, store markers).

The operator's own Jobs are followed through their watch events (job_events.py). A version can also come
from elsewhere: an import with the checkpoint-store API, a restore, another cluster's trainer writing to
the same bucket. Every publish marks the tier's newest version in its namespace's feed
(``<namespace>/_feed/<tier>@v000007``, storage/store.py), so one listing per store and namespace tells the
leader which tiers moved; those tiers, then their Swarms, are reconciled at once instead of on the resync.

The feed is a hint: a missed or lost mark only delays a version to the next resync, and a reconcile is the
usual idempotent pass (the tier reads its versions from the manifests, never from the feed).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

from dynamiclora.builders.names import LABEL_SWARM
from dynamiclora.controllers.common import consolidation_touching
from dynamiclora.controllers.tier_storage import StoreAccess
from dynamiclora.kube import Kube, Obj
from dynamiclora.metrics import STORE_FEED_VERSIONS

log = logging.getLogger("dynamiclora.operator")

FeedKey = tuple[str, str]  # (store URI, namespace)


@dataclass
class StoreFeed:
    """The feeds of the stores the operator's tiers read, and the head of each tier seen last.

    Every tier pass re-registers its store, so a feed no tier has named for ``forget_after`` seconds (its
    tiers deleted, or moved to other storage) is no longer listed; once a namespace has no feed left, its
    ``dynamiclora_store_feed_versions_total`` series goes too (a dashboard stops plotting it).
    """

    forget_after: float = 600.0
    stores: dict[FeedKey, StoreAccess] = field(default_factory=dict)
    heads: dict[FeedKey, dict[str, int]] = field(default_factory=dict)  # absent: not listed yet
    failing: dict[FeedKey, str] = field(default_factory=dict)  # the last error of each feed, logged once
    named: dict[FeedKey, float] = field(default_factory=dict)  # when a tier pass last named the feed
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # watch: loop; poll: a thread

    def watch(self, access: StoreAccess, namespace: str) -> None:
        """Follow ``namespace``'s feed in ``access``'s store (a tier pass calls this with the store it read)."""
        with self.lock:
            self.stores[(access.uri, namespace)] = access  # the newest client: a rotated key replaces the old
            self.named[(access.uri, namespace)] = time.monotonic()

    def poll(self) -> list[tuple[str, str, int]]:
        """``(namespace, tier, version)`` for each tier whose head moved since the last poll.

        A feed's first listing is the baseline (what the tier passes that registered it have observed).
        """
        with self.lock:
            for key in [k for k, at in self.named.items() if time.monotonic() - at > self.forget_after]:
                for table in (self.stores, self.heads, self.failing, self.named):
                    table.pop(key, None)
                if all(ns != key[1] for _, ns in self.stores):  # no store of the namespace followed any more
                    with contextlib.suppress(KeyError):
                        STORE_FEED_VERSIONS.remove(key[1])
            feeds = list(self.stores.items())
        moved: list[tuple[str, str, int]] = []
        for key, access in feeds:
            try:
                now = access.open().heads(key[1])
            except Exception as e:  # an unreachable store is reported by its tiers' own passes
                if self.failing.get(key) != str(e):
                    log.warning("store feed %s/%s/_feed unreadable: %s", key[0], key[1], e)
                self.failing[key] = str(e)
                continue
            self.failing.pop(key, None)
            before = self.heads.get(key)
            self.heads[key] = now
            if before is not None:
                moved += [(key[1], tier, v) for tier, v in sorted(now.items()) if v > before.get(tier, 0)]
        return moved


def to_reconcile(kube: Kube, namespace: str, tier: str, version: int) -> list[tuple[str, str]]:
    """``(kind, name)`` to reconcile, in order, for a feed mark: the tier, then its Swarm.

    The tier is skipped when its status already holds ``version`` (a pass observed it), and both when every
    ready pod already serves it (``servedVersion``) or when a Job of the operator that writes the tier runs:
    the tier's own training Job publishes, then composes the new stack ahead; a consolidation Job publishes
    its target, then the residual of its inputs. Their completion is followed (job_events.py); serving
    earlier would compose what the training Job composes, or a half-published migration. An unknown tier
    (another cluster's) gives nothing.
    """
    obj: Obj | None = kube.read_through("LoRATier", namespace, tier)
    status = (obj or {}).get("status") or {}
    if obj is None or status.get("activeJob") or int(status.get("servedVersion") or 0) >= version:
        return []
    if consolidation_touching(kube, namespace, tier):
        return []
    out = [] if int(status.get("currentVersion") or 0) >= version else [("LoRATier", tier)]
    swarm = obj.get("spec", {}).get("swarmRef") or (obj["metadata"].get("labels") or {}).get(LABEL_SWARM)
    if swarm:
        out.append(("Swarm", str(swarm)))
    return out
