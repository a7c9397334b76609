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

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dynamiclora.controllers.promotion import is_accepted
from dynamiclora.storage.base import StoreError, VersionRef, parse_version_dir

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


@dataclass(frozen=True)
class Link:
    """A source version a migration or consensus version was derived from, and its residual's kind."""

    namespace: str
    tier: str
    version: int
    derived_from: tuple[tuple[str, str], ...]  # (uri, digest) pairs as the residual records them
    residual: str = RESIDUAL


@functools.lru_cache(maxsize=4096)
def _manifest(store: str, ns: str, tier: str, version: int) -> VersionRef:
    """A version's manifest; versions are immutable and never renumbered, so caching is exact.

    Raises (and so caches nothing) when the version is missing.
    """
    from dynamiclora.storage.uri import open_store

    return open_store(store).get(ns, tier, version)


def manifest(store: str, ns: str, tier: str, version: int) -> VersionRef | None:
    if version < 1:  # a tier with no version yet
        return None
    try:
        return _manifest(store, ns, tier, version)
    except StoreError:
        return None


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


Versions = Callable[[str, str, str], list[int]]  # (store, namespace, tier) -> published versions


def versions_memo() -> Versions:
    """Version listing memoised for one pass: shared tiers sit in every agent's stack, list each once."""
    seen: dict[tuple[str, str, str], list[int]] = {}

    def versions(store: str, ns: str, tier: str) -> list[int]:
        from dynamiclora.storage.uri import open_store

        if (store, ns, tier) not in seen:
            seen[store, ns, tier] = open_store(store).list_versions(ns, tier)
        return seen[store, ns, tier]

    return versions


def applied(source: Entry, link: Link, versions: Versions) -> bool:
    """Whether the composed source version already is (or descends from) the step's residual."""
    for v in versions(source.store, source.namespace, source.tier):
        if link.version < v <= source.version:
            ref = manifest(source.store, source.namespace, source.tier, v)
            md = ref.manifest.metadata if ref else {}
            if md.get("kind") == link.residual and _derived(md) == link.derived_from:
                return True
    return False


def _composed_links(ref: VersionRef, faster: dict[tuple[str, str], Entry]) -> list[tuple[Link, Entry]]:
    """The version's links whose source tier is in the stack (another agent's residual is not ours to wait for)."""
    return [(link, faster[link.namespace, link.tier]) for link in links_of(ref)
            if (link.namespace, link.tier) in faster]  # fmt: skip


def _consistent(ref: VersionRef, faster: dict[tuple[str, str], Entry], versions: Versions) -> bool:
    """A migration or consensus version is consistent only with its residuals (or newer) on the source side."""
    return all(applied(source, link, versions) for link, source in _composed_links(ref, faster))


def _pulls_forward(ref: VersionRef, faster: dict[tuple[str, str], Entry], versions: Versions) -> bool:
    """A newer migration or consensus whose residuals the source side already composes (the status lags)."""
    links = _composed_links(ref, faster)
    return bool(links) and is_accepted(ref) and all(applied(source, link, versions) for link, source in links)


def settle(entry: Entry, faster: list[Entry], versions: Versions) -> int | None:
    """The version of ``entry``'s tier to compose with the ``faster`` entries already settled.

    The newest accepted version consistent with them: a migration whose residual is already composed on
    the source side pulls the destination forward (its status may not have caught up yet); one whose
    residual is not composed yet pushes it back to the version before. ``None`` when no version of the
    tier is consistent (the migration created the tier: there is no "before" to serve).
    """
    if not faster:
        return entry.version
    by_tier = {(e.namespace, e.tier): e for e in faster}
    published = versions(entry.store, entry.namespace, entry.tier)
    top = entry.version
    for v in reversed([v for v in published if v > entry.version]):
        ref = manifest(entry.store, entry.namespace, entry.tier, v)
        if ref is not None and _pulls_forward(ref, by_tier, versions):
            top = v
            break
    for v in sorted({v for v in published if v <= top} | {top}, reverse=True):
        ref = manifest(entry.store, entry.namespace, entry.tier, v)
        if ref is None and v == entry.version:
            return v  # nothing to judge it by: composing it reports the missing version
        # The status's own version is accepted already (pinned tiers are not settled at all).
        if ref is not None and (v == entry.version or is_accepted(ref)) and _consistent(ref, by_tier, versions):
            return v
    return None


def stack_is_consistent(entries: list[Entry], versions: Versions) -> bool:
    """Whether a stack (fastest tier first) holds no half-applied migration or consensus step.

    Each slower version must be the one :func:`settle` picks given the faster ones: a destination
    without its residual counts moved components twice, a residual without its destination not at all.
    """
    return all(settle(e, entries[:i], versions) == e.version for i, e in enumerate(entries))
