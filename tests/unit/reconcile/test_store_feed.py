"""A version published by anyone (not only the operator's Jobs) is served without waiting for the resync
(issue 19: event-driven freshness, store markers). Real file store, the operator's handlers in-process."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.builders.names import ANNOTATION_INPUTS, ANNOTATION_TARGET
from dynamiclora.controllers import handlers
from dynamiclora.controllers.store_feed import StoreFeed, to_reconcile
from dynamiclora.controllers.tier_storage import StoreAccess
from dynamiclora.kube import KubeError
from dynamiclora.metrics import STORE_FEED_VERSIONS
from dynamiclora.serving.metrics import REGISTRY
from dynamiclora.settings import OperatorSettings

from .fakekube import FakeKube
from .test_composer import _publish_adapter
from .test_job_events import _job, _swarm

NS = "default"
CTX, AGENT = "support-alice-context", "support-alice-agent"


def _watching(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]) -> handlers.Runtime:
    """One agent's Swarm whose tiers have had a pass each: the operator watches their store's feed."""
    _swarm(kube, settings, swarm_body)
    rt = handlers.Runtime(kube, replace(settings, feed_seconds=0.01))
    for tier in (CTX, AGENT):
        asyncio.run(handlers.handle_tier(rt, kube.objects[("LoRATier", NS, tier)]))
    assert len(rt.feed.stores) == 1 and rt.feed.poll() == []  # the first listing is the baseline
    # The watched namespace's counter exists from the start (0 until a version comes through the feed).
    assert REGISTRY.get_sample_value("dynamiclora_store_feed_versions_total", {"namespace": NS}) is not None
    return rt


def _feed_until(rt: handlers.Runtime, done: Any) -> None:
    async def run() -> None:
        loop = asyncio.create_task(handlers.feed_forever(rt))
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if done():
                break
        loop.cancel()

    asyncio.run(run())


def _composers(kube: FakeKube) -> int:
    return [j["metadata"]["labels"].get("dynamiclora.io/component") for j in kube.list("Job", NS)].count("composer")


def test_an_imported_version_is_taken_and_composed_without_the_resync(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    rt = _watching(kube, settings, swarm_body)
    counted = REGISTRY.get_sample_value("dynamiclora_store_feed_versions_total", {"namespace": NS}) or 0.0
    _publish_adapter(settings, CTX, tmp_path, seed=0)  # an import: no Job of the operator's ran
    _feed_until(rt, lambda: _composers(kube) > 0)
    # The tier took the version and the Swarm, reconciled right after, started the compose Job for it.
    assert kube.objects[("LoRATier", NS, CTX)]["status"]["currentVersion"] == 1
    assert _composers(kube) == 1
    assert REGISTRY.get_sample_value("dynamiclora_store_feed_versions_total", {"namespace": NS}) == counted + 1


def test_tiers_of_one_swarm_moved_together_reconcile_the_swarm_once(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    rt = _watching(kube, settings, swarm_body)
    seen: list[str] = []

    async def record(rt: Any, body: Any) -> None:
        seen.append(body["metadata"]["name"])

    monkeypatch.setattr(handlers, "KINDS", {p: (k, record) for p, (k, _) in handlers.KINDS.items()})
    _publish_adapter(settings, AGENT, tmp_path, seed=1)
    _publish_adapter(settings, CTX, tmp_path, seed=2)
    _feed_until(rt, lambda: "support" in seen)
    assert sorted(seen[:2]) == [AGENT, CTX] and seen[2:] == ["support"]

    seen.clear()
    follower = handlers.Runtime(kube, rt.settings, leadership=type("L", (), {"leader": False})())  # type: ignore[arg-type]
    follower.feed = rt.feed
    _publish_adapter(settings, CTX, tmp_path, seed=3)
    _feed_until(follower, lambda: False)
    assert seen == []  # a follower never reconciles (nor lists the feeds)
    assert rt.feed.heads[next(iter(rt.feed.heads))][CTX] == 1


def test_what_a_mark_asks_for_depends_on_what_the_tier_has_seen_and_serves(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    _swarm(kube, settings, swarm_body)
    status = kube.objects[("LoRATier", NS, CTX)].setdefault("status", {})
    assert to_reconcile(kube, NS, CTX, 1) == [("LoRATier", CTX), ("Swarm", "support")]
    status.update(currentVersion=1)  # observed by a tier pass (a resync): the Swarm has yet to serve it
    assert to_reconcile(kube, NS, CTX, 1) == [("Swarm", "support")]
    assert to_reconcile(kube, NS, CTX, 2) == [("LoRATier", CTX), ("Swarm", "support")]
    status.update(servedVersion=2)  # already served on every pod: nothing to do
    assert to_reconcile(kube, NS, CTX, 2) == []
    # The tier's own training Job publishes, then composes ahead: its completion is followed (job_events).
    status.update(activeJob="support-alice-context-train-v3")
    assert to_reconcile(kube, NS, CTX, 3) == []
    assert to_reconcile(kube, NS, "another-clusters-tier", 1) == []
    # A migration publishes its target, then the residual of its inputs: its completion is followed too.
    status.pop("activeJob")
    policy = kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "MigrationPolicy", "metadata": {"name": "p"}})
    touching = {ANNOTATION_TARGET: AGENT, ANNOTATION_INPUTS: CTX}
    migration = kube.add(_job("mig-p-1", policy, "consolidator", state="", annotations=touching))
    assert to_reconcile(kube, NS, CTX, 3) == [] and to_reconcile(kube, NS, AGENT, 1) == []
    migration["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert to_reconcile(kube, NS, CTX, 3) == [("LoRATier", CTX), ("Swarm", "support")]


def test_an_unreadable_feed_is_logged_once_and_skipped(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    feed = StoreFeed()
    feed.watch(StoreAccess("nosuch://bucket/dl"), NS)
    feed.watch(StoreAccess(f"file://{tmp_path}/store"), NS)
    with caplog.at_level(logging.WARNING, logger="dynamiclora.operator"):
        assert feed.poll() == [] and feed.poll() == []
    assert len([r for r in caplog.records if "nosuch://bucket/dl" in r.getMessage()]) == 1
    assert feed.heads == {(f"file://{tmp_path}/store", NS): {}}  # the readable feed is still followed


def test_a_feed_no_tier_names_any_more_is_forgotten(tmp_path: Path) -> None:
    feed = StoreFeed(forget_after=60.0)
    gone, live = StoreAccess(f"file://{tmp_path}/gone"), StoreAccess(f"file://{tmp_path}/live")
    feed.watch(gone, NS)
    feed.watch(live, NS)
    assert feed.poll() == [] and set(feed.heads) == {(gone.uri, NS), (live.uri, NS)}
    STORE_FEED_VERSIONS.labels(NS)
    feed.named[(gone.uri, NS)] -= 61  # no tier pass has named it for longer than forget_after
    assert feed.poll() == [] and set(feed.stores) == set(feed.heads) == {(live.uri, NS)}
    assert REGISTRY.get_sample_value("dynamiclora_store_feed_versions_total", {"namespace": NS}) is not None
    feed.named[(live.uri, NS)] -= 61  # the namespace's last feed: its counter series goes with it
    assert feed.poll() == [] and not feed.stores
    assert REGISTRY.get_sample_value("dynamiclora_store_feed_versions_total", {"namespace": NS}) is None


def test_a_failed_feed_pass_does_not_stop_the_feed(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Named fault: the API server refuses the read of the moved tier once (a 503 cannot be had on demand from
    a real one here). That mark waits for the resync; the feed goes on and serves the next version."""
    rt = _watching(kube, settings, swarm_body)
    calls: list[int] = []
    real = handlers.to_reconcile

    def flaky(kube: Any, ns: str, tier: str, version: int) -> list[tuple[str, str]]:
        calls.append(version)
        if len(calls) == 1:
            raise KubeError(503, "the API server is unavailable")
        return real(kube, ns, tier, version)

    monkeypatch.setattr(handlers, "to_reconcile", flaky)
    _publish_adapter(settings, CTX, tmp_path, seed=4)
    _feed_until(rt, lambda: calls == [1])
    assert _composers(kube) == 0
    _publish_adapter(settings, CTX, tmp_path, seed=5)
    _feed_until(rt, lambda: _composers(kube) > 0)
    assert calls == [1, 2] and kube.objects[("LoRATier", NS, CTX)]["status"]["currentVersion"] == 2
