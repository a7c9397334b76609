"""Keep a composed stack off half-applied migrations.

A migration Job publishes two versions, one after the other: the destination (manifest kind
``migration``, now holding the moved components), then the source residual (kind ``migration-source``,
now without them). Both record the same ``derivedFrom`` (the source version the Job read). Each tier's
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
    """The source version a migration version was derived from."""

    namespace: str
    tier: str
    version: int
    derived_from: tuple[tuple[str, str], ...]  # (uri, digest) pairs as recorded, for exact matching


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


def link_of(ref: VersionRef) -> Link | None:
    """For a migration destination version: the source version it moved components out of."""
    md = ref.manifest.metadata
    derived = _derived(md)
    if md.get("kind") != MIGRATION or derived is None or len(derived) != 1:
        return None
    # ``<store root>/<namespace>/<tier>/v000007``: only the tail, the root differs between observers.
    parts = derived[0][0].rstrip("/").rsplit("/", 3)
    version = parse_version_dir(parts[-1]) if len(parts) == 4 else None
    if version is None:
        return None
    return Link(parts[1], parts[2], version, derived)


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
    """Whether the composed source version already is (or descends from) the migration's residual."""
    for v in versions(source.store, source.namespace, source.tier):
        if link.version < v <= source.version:
            ref = manifest(source.store, source.namespace, source.tier, v)
            md = ref.manifest.metadata if ref else {}
            if md.get("kind") == RESIDUAL and _derived(md) == link.derived_from:
                return True
    return False


def _consistent(ref: VersionRef, faster: dict[tuple[str, str], Entry], versions: Versions) -> bool:
    """A migration version is consistent only with its own residual (or newer) on the source side."""
    link = link_of(ref)
    source = faster.get((link.namespace, link.tier)) if link else None
    return link is None or source is None or applied(source, link, versions)


def _pulls_forward(ref: VersionRef, faster: dict[tuple[str, str], Entry], versions: Versions) -> bool:
    """A newer migration whose residual the source side already composes (the status lags behind)."""
    link = link_of(ref)
    source = faster.get((link.namespace, link.tier)) if link else None
    return link is not None and source is not None and is_accepted(ref) and applied(source, link, versions)


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
