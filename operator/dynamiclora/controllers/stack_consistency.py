"""Keep a composed stack off half-applied migrations and consensus steps.

A migration Job publishes two versions, one after the other: the destination (manifest kind
``migration``, now holding the moved components), then the source residual (kind ``migration-source``,
now without them). Both record the same ``derivedFrom`` (the source version the Job read). A consensus
Job is the same with several sources: the shared tier (kind ``consensus``, ``derivedFrom`` every agent
version it combined) first, then each agent's residual (kind ``consensus-agent``, ``derivedFrom`` that
agent's version), unless it ran without updating the agents (``updatesAgents: false``). Each tier's
status follows its own store independently, so until both versions are published *and* observed, the
tiers' newest versions can pair the new destination with the old source (the moved components counted
twice) or the old destination with the residual (counted not at all). Serving therefore settles the
stack fastest tier first and composes each slower tier at the newest accepted version that is
consistent with the faster versions already chosen. The store, not the statuses, is the judge.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dynamiclora.builders.jobs import tier_ref
from dynamiclora.controllers.promotion import is_accepted
from dynamiclora.storage.base import CheckpointStore, StoreError, VersionRef, parse_version_dir
from dynamiclora.training.options import StackSpec

MIGRATION, RESIDUAL = "migration", "migration-source"
CONSENSUS, CONSENSUS_RESIDUAL = "consensus", "consensus-agent"


@dataclass(frozen=True)
class StackEntry:
    """One tier version of an agent's stack (what serving composes and training freezes)."""

    tier: str
    level: str
    version: int
    store: str  # checkpoint-store URI of the tier
    namespace: str  # namespace of the tier in the store (its Kubernetes namespace)


Entry = StackEntry

LEVEL_LETTER = {"context": "c", "agent": "a", "swarm": "s", "domain": "d", "foundation": "f"}


def stack_key(entries: Sequence[StackEntry]) -> str:
    """The composed adapter's folder name: a hash of the exact tier versions (and stores) it is built from."""
    text = "|".join(f"{e.store}/{e.tier}@{e.version}" for e in entries)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def stack_label(entries: Sequence[StackEntry]) -> str:
    """Human-readable composite version, e.g. ``c3.a2.s1``."""
    return ".".join(f"{LEVEL_LETTER.get(e.level, e.level)}{e.version}" for e in entries)


def stack_spec(agent: str, entries: Sequence[StackEntry]) -> StackSpec:
    """What ``dynamiclora compose`` (or a training Job composing ahead) is told to compose for ``agent``."""
    return StackSpec(agent, stack_key(entries), stack_label(entries),
                     tuple((e.level, tier_ref(e.store, e.namespace, e.tier, e.version)) for e in entries))


@dataclass(frozen=True)
class Link:
    """A source version a migration or consensus version was derived from, and its residual's kind."""

    namespace: str
    tier: str
    version: int
    derived_from: tuple[tuple[str, str], ...]  # (uri, digest) pairs as the residual records them
    residual: str = RESIDUAL


_MANIFESTS_KEPT = 4096
_manifest_lock = threading.Lock()
_manifests: OrderedDict[tuple[str, str, str, int], VersionRef] = OrderedDict()


class StoreView:
    """The checkpoint stores one pass reads, each opened with its custom resource's S3 client.

    ``clients`` maps a store URI to the boto3 client built from that resource's ``spec.storage.s3``
    (endpoint, region, credentials Secret); a store without one (a PVC) needs none. Version lists are
    memoised for the pass (shared tiers sit in every agent's stack: list each once); manifests are kept
    process-wide, since versions are immutable and never renumbered.
    """

    def __init__(self, clients: Mapping[str, Any] | None = None) -> None:
        self.clients = dict(clients or {})
        self._versions: dict[tuple[str, str, str], list[int]] = {}

    def open(self, store: str) -> CheckpointStore:
        from dynamiclora.storage.uri import open_store

        return open_store(store, s3_client=self.clients.get(store))

    def versions(self, store: str, ns: str, tier: str) -> list[int]:
        if (store, ns, tier) not in self._versions:
            self._versions[store, ns, tier] = self.open(store).list_versions(ns, tier)
        return self._versions[store, ns, tier]

    def manifest(self, store: str, ns: str, tier: str, version: int) -> VersionRef | None:
        """A version's manifest, or None when the tier has none (version 0) or it is missing."""
        if version < 1:
            return None
        key = (store, ns, tier, version)
        with _manifest_lock:
            if key in _manifests:
                _manifests.move_to_end(key)
                return _manifests[key]
        try:
            ref = self.open(store).get(ns, tier, version)
        except StoreError:
            return None  # not cached: it may be published later
        with _manifest_lock:
            _manifests[key] = ref
            while len(_manifests) > _MANIFESTS_KEPT:
                _manifests.popitem(last=False)
        return ref


def _derived(md: dict[str, Any]) -> tuple[tuple[str, str], ...] | None:
    inputs = md.get("derivedFrom")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        return None
    return tuple((str(i.get("uri", "")), str(i.get("digest", ""))) for i in inputs)


def _link(item: tuple[str, str], derived: tuple[tuple[str, str], ...], residual: str) -> Link | None:
    # ``<store root>/<namespace>/<tier>/v000007``: only the tail, the root differs between observers.
    parts = item[0].rstrip("/").rsplit("/", 3)
    version = parse_version_dir(parts[-1]) if len(parts) == 4 else None
    return Link(parts[1], parts[2], version, derived, residual) if version is not None else None


def links_of(ref: VersionRef) -> list[Link]:
    """The source versions a migration or consensus version took content from (whose residuals must follow)."""
    md = ref.manifest.metadata
    derived = _derived(md)
    if derived is None:
        return []
    if md.get("kind") == MIGRATION and len(derived) == 1:
        link = _link(derived[0], derived, RESIDUAL)
        return [link] if link else []
    if md.get("kind") == CONSENSUS and md.get("updatesAgents", True) is not False:
        return [link for item in derived if (link := _link(item, (item,), CONSENSUS_RESIDUAL))]
    return []


def applied(source: Entry, link: Link, view: StoreView) -> bool:
    """Whether the composed source version already is (or descends from) the step's residual."""
    for v in view.versions(source.store, source.namespace, source.tier):
        if link.version < v <= source.version:
            ref = view.manifest(source.store, source.namespace, source.tier, v)
            md = ref.manifest.metadata if ref else {}
            if md.get("kind") == link.residual and _derived(md) == link.derived_from:
                return True
    return False


def _composed_links(ref: VersionRef, faster: dict[tuple[str, str], Entry]) -> list[tuple[Link, Entry]]:
    """The version's links whose source tier is in the stack (another agent's residual is not ours to wait for)."""
    return [(link, faster[link.namespace, link.tier]) for link in links_of(ref)
            if (link.namespace, link.tier) in faster]  # fmt: skip


def _consistent(ref: VersionRef, faster: dict[tuple[str, str], Entry], view: StoreView) -> bool:
    """A migration or consensus version is consistent only with its residuals (or newer) on the source side."""
    return all(applied(source, link, view) for link, source in _composed_links(ref, faster))


def _pulls_forward(ref: VersionRef, faster: dict[tuple[str, str], Entry], view: StoreView) -> bool:
    """A newer migration or consensus whose residuals the source side already composes (the status lags)."""
    links = _composed_links(ref, faster)
    return bool(links) and is_accepted(ref) and all(applied(source, link, view) for link, source in links)


def settle(entry: Entry, faster: list[Entry], view: StoreView) -> int | None:
    """The version of ``entry``'s tier to compose with the ``faster`` entries already settled.

    The newest accepted version consistent with them: a migration whose residual is already composed on
    the source side pulls the destination forward (its status may not have caught up yet); one whose
    residual is not composed yet pushes it back to the version before. ``None`` when no version of the
    tier is consistent (the migration created the tier: there is no "before" to serve).
    """
    if not faster:
        return entry.version
    by_tier = {(e.namespace, e.tier): e for e in faster}
    published = view.versions(entry.store, entry.namespace, entry.tier)
    top = entry.version
    for v in reversed([v for v in published if v > entry.version]):
        ref = view.manifest(entry.store, entry.namespace, entry.tier, v)
        if ref is not None and _pulls_forward(ref, by_tier, view):
            top = v
            break
    for v in sorted({v for v in published if v <= top} | {top}, reverse=True):
        ref = view.manifest(entry.store, entry.namespace, entry.tier, v)
        if ref is None and v == entry.version:
            return v  # nothing to judge it by: composing it reports the missing version
        # The status's own version is accepted already (pinned tiers are not settled at all).
        if ref is not None and (v == entry.version or is_accepted(ref)) and _consistent(ref, by_tier, view):
            return v
    return None


def stack_is_consistent(entries: list[Entry], view: StoreView) -> bool:
    """Whether a stack (fastest tier first) holds no half-applied migration or consensus step.

    Each slower version must be the one :func:`settle` picks given the faster ones: a destination
    without its residual counts moved components twice, a residual without its destination not at all.
    """
    return all(settle(e, entries[:i], view) == e.version for i, e in enumerate(entries))
