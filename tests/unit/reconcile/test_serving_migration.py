"""Serving never composes a half-applied migration (in-memory Kube, real filesystem checkpoint store).

A migration Job publishes the destination (agent tier) first and the source residual (context tier)
second; each tier's status catches up on its own. Whatever has been published and observed so far, an
agent's composed stack must pair the old destination with a pre-migration source, or the new
destination with the residual (or newer): never the moved components twice, nor not at all.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

from dynamiclora.api.swarm import Swarm
from dynamiclora.controllers.serving import desired_stacks
from dynamiclora.controllers.stack_consistency import StackEntry, StoreView, stack_is_consistent
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.uri import open_store

from .fakekube import FakeKube
from .test_reconcile import NS, _publish, _store, _swarm, _tier_pass

CTX, AGENT = "support-alice-context", "support-alice-agent"


def _migration_meta(settings: OperatorSettings, source_version: int, kind: str) -> dict[str, Any]:
    """What ``consolidate`` records on both outputs of one migration (see training/consolidate.py)."""
    src = open_store(_store(settings)).get(NS, CTX, source_version)
    return {"kind": kind, "derivedFrom": [{"uri": src.uri, "digest": src.digest}],
            "destBase": 1 if kind == "migration" else "n/a", "migrated": 2, "job": "mig-p-support-alice-agent-2"}


def _composed(kube: FakeKube, settings: OperatorSettings, live: dict[str, Any], statuses: dict[str, int]) -> Any:
    for tier, version in statuses.items():
        kube.objects[("LoRATier", NS, tier)]["status"] = {"currentVersion": version}
    stack = desired_stacks(kube, settings, live, Swarm.model_validate(live))[0]
    return {e.tier: e.version for e in stack.entries}


def test_a_half_applied_migration_is_never_composed(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    live = _swarm(kube, settings, swarm_body)
    for _ in range(2):
        _publish(settings, CTX, tmp_path, {"kind": "training"})  # c1, c2: c2 is the migration's input
    _publish(settings, AGENT, tmp_path, {"kind": "training"})  # a1: the destination before the migration
    old = {CTX: 2, AGENT: 1}
    assert _composed(kube, settings, live, old) == old

    # The race: the Job published the destination (a2) and not yet the residual; the agent tier's status
    # may already show a2, but a2 + c2 would serve the migrated components twice.
    assert _publish(settings, AGENT, tmp_path, _migration_meta(settings, 2, "migration")) == 2
    for agent_status in (1, 2):
        assert _composed(kube, settings, live, {CTX: 2, AGENT: agent_status}) == old

    # The residual (c3) is published; every order in which the two statuses catch up composes either
    # the old pair or the new one, and a lagging destination status is pulled forward, not left behind.
    assert _publish(settings, CTX, tmp_path, _migration_meta(settings, 2, "migration-source")) == 3
    new = {CTX: 3, AGENT: 2}
    for ctx_status, agent_status in itertools.product((2, 3), (1, 2)):
        got = _composed(kube, settings, live, {CTX: ctx_status, AGENT: agent_status})
        assert got in (old, new), (ctx_status, agent_status, got)
        assert got == (new if ctx_status == 3 else old)

    # Training on top of the residual (c4) keeps the migration: "the residual or newer".
    _publish(settings, CTX, tmp_path, {"kind": "training"})
    assert _composed(kube, settings, live, {CTX: 4, AGENT: 2}) == {CTX: 4, AGENT: 2}


def test_statuses_from_the_tier_reconciler_never_mix_a_migration(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    live = _swarm(kube, settings, swarm_body)
    for _ in range(2):
        _publish(settings, CTX, tmp_path, {"kind": "training"})
    _publish(settings, AGENT, tmp_path, {"kind": "training"})
    for tier in (CTX, AGENT):
        _tier_pass(kube, settings, tier)

    def stack() -> dict[str, int]:
        return {e.tier: e.version for e in desired_stacks(kube, settings, live, Swarm.model_validate(live))[0].entries}

    _publish(settings, AGENT, tmp_path, _migration_meta(settings, 2, "migration"))
    _tier_pass(kube, settings, AGENT)  # the operator observes the destination before the residual exists
    assert kube.objects[("LoRATier", NS, AGENT)]["status"]["currentVersion"] == 2
    assert stack() == {CTX: 2, AGENT: 1}
    # A training Job on the source slips in before the residual: still the old destination.
    _publish(settings, CTX, tmp_path, {"kind": "training"})
    _tier_pass(kube, settings, CTX)
    assert stack() == {CTX: 3, AGENT: 1}
    _publish(settings, CTX, tmp_path, _migration_meta(settings, 2, "migration-source"))
    _tier_pass(kube, settings, CTX)
    assert stack() == {CTX: 4, AGENT: 2}


def test_a_migration_that_created_the_destination_waits_for_its_residual(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    live = _swarm(kube, settings, swarm_body)
    for _ in range(2):
        _publish(settings, CTX, tmp_path, {"kind": "training"})
    _publish(settings, AGENT, tmp_path, _migration_meta(settings, 2, "migration"))
    assert _composed(kube, settings, live, {CTX: 2, AGENT: 1}) == {CTX: 2}  # nothing before a1 to serve
    # An explicit pin is the user's choice and is composed as pinned.
    kube.objects[("LoRATier", NS, AGENT)]["spec"]["pinnedVersion"] = 1
    assert _composed(kube, settings, live, {CTX: 2, AGENT: 1}) == {CTX: 2, AGENT: 1}
    del kube.objects[("LoRATier", NS, AGENT)]["spec"]["pinnedVersion"]
    _publish(settings, CTX, tmp_path, _migration_meta(settings, 2, "migration-source"))
    assert _composed(kube, settings, live, {CTX: 3, AGENT: 1}) == {CTX: 3, AGENT: 1}


def test_training_freezes_exactly_the_stack_serving_composes_with_its_start_version(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    """Found by the e2e: a residual trained with no agent tier learned back what the agent tier held."""
    from dynamiclora.api.tier import LoRATier
    from dynamiclora.controllers.tier import _frozen_tiers

    live = _swarm(kube, settings, swarm_body)
    sw = Swarm.model_validate(live)
    ctx = LoRATier.model_validate(kube.objects[("LoRATier", NS, CTX)])
    for _ in range(2):
        _publish(settings, CTX, tmp_path, {"kind": "training"})
    _publish(settings, AGENT, tmp_path, _migration_meta(settings, 2, "migration"))  # a1 created by the move
    _publish(settings, CTX, tmp_path, _migration_meta(settings, 2, "migration-source"))  # c3, the residual

    def frozen(init: int, agent_status: int | None) -> list[tuple[str, int]]:
        kube.objects[("LoRATier", NS, AGENT)]["status"] = {"currentVersion": agent_status} if agent_status else {}
        return [(e.tier, e.version) for e in _frozen_tiers(kube, settings, NS, sw, ctx, _store(settings), StoreView(),
                                                           init)]  # fmt: skip

    # From the residual: the destination belongs to the stack even before the agent tier's status shows it.
    assert frozen(3, None) == frozen(3, 1) == [(AGENT, 1)]
    # From the pre-migration version: never the destination that already holds its components.
    assert frozen(2, None) == frozen(2, 1) == []


def test_a_training_job_composes_ahead_exactly_the_stack_serving_looks_for_once_its_version_is_current(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 19 (freshness): a Job composes ahead under the key serving computes for the accepted version; a
    divergence would silently bring back a compose Job on every round."""
    from dynamiclora.api.tier import LoRATier
    from dynamiclora.controllers.tier import _compose_ahead, _frozen_tiers

    live = _swarm(kube, settings, swarm_body)
    sw = Swarm.model_validate(live)
    ctx = LoRATier.model_validate(kube.objects[("LoRATier", NS, CTX)])
    _publish(settings, CTX, tmp_path, {"kind": "training"})  # c1
    _publish(settings, AGENT, tmp_path, {"kind": "training"})  # a1
    for tier in (CTX, AGENT):
        kube.objects[("LoRATier", NS, tier)]["status"] = {"currentVersion": 1}
    slower = _frozen_tiers(kube, settings, NS, sw, ctx, _store(settings), StoreView(), 1)
    ahead = _compose_ahead(settings, sw, ctx, _store(settings), 2, slower)
    assert ahead is not None and ahead.swarm == "support" and ahead.stack.label == "c2.a1"
    assert (ahead.max_lora_rank, ahead.base_model_name) == (sw.spec.inference.max_lora_rank, sw.spec.base_model.name)

    _publish(settings, CTX, tmp_path, {"kind": "training"})  # c2: the Job's version, accepted
    kube.objects[("LoRATier", NS, CTX)]["status"] = {"currentVersion": 2}
    (served,) = [s for s in desired_stacks(kube, settings, live, sw) if s.agent == "alice"]
    assert ahead.stack == served.spec()

    # Serving composes something else for a pinned agent or tier: nothing is composed ahead.
    pinned = copy.deepcopy(live)
    pinned["spec"]["agents"][0]["pinnedVersions"] = {"agent": 1}
    assert _compose_ahead(settings, Swarm.model_validate(pinned), ctx, _store(settings), 2, slower) is None
    pinned_tier = copy.deepcopy(kube.objects[("LoRATier", NS, CTX)])
    pinned_tier["spec"]["pinnedVersion"] = 1
    assert _compose_ahead(settings, sw, LoRATier.model_validate(pinned_tier), _store(settings), 2, slower) is None


def test_a_consensus_is_composed_for_an_agent_only_with_that_agents_residual(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    """The shared tier is published before the agents' remainders: never serve the shared part twice."""
    live = _swarm(kube, settings, swarm_body)
    shared, bob_agent = "support-swarm", "support-bob-agent"
    kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "LoRATier",
              "metadata": {"name": shared, "namespace": NS}, "spec": {"level": "swarm", "swarmRef": "support"}})
    store = open_store(_store(settings))
    for tier in (AGENT, bob_agent):
        _publish(settings, tier, tmp_path, {"kind": "training"})  # a1 of each agent
    inputs = [{"uri": (r := store.get(NS, t, 1)).uri, "digest": r.digest} for t in (AGENT, bob_agent)]
    _publish(settings, shared, tmp_path, {"kind": "consensus", "derivedFrom": inputs, "destBase": None})  # s1

    def stacks(agent_versions: dict[str, int]) -> dict[str, dict[str, int]]:
        for tier, version in {**agent_versions, shared: 1}.items():
            kube.objects[("LoRATier", NS, tier)]["status"] = {"currentVersion": version}
        return {s.agent: {e.tier: e.version for e in s.entries if e.tier != CTX}
                for s in desired_stacks(kube, settings, live, Swarm.model_validate(live))}

    # No remainder yet: s1 holds what a1 holds, so neither agent is served with it.
    assert stacks({AGENT: 1, bob_agent: 1}) == {"alice": {AGENT: 1}, "bob": {bob_agent: 1}}
    # Alice's remainder lands (a2 = a1 minus the shared part): alice gets s1, bob still waits for his.
    _publish(settings, AGENT, tmp_path, {"kind": "consensus-agent", "derivedFrom": inputs[:1], "destBase": "n/a"})
    assert stacks({AGENT: 2, bob_agent: 1}) == {"alice": {AGENT: 2, shared: 1}, "bob": {bob_agent: 1}}
    assert stacks({AGENT: 1, bob_agent: 1})["alice"] == {AGENT: 1}  # the status lags: the old pair

    # A consensus that left the agents unchanged adds to them: served at once.
    _publish(settings, shared, tmp_path, {"kind": "consensus", "derivedFrom": inputs, "destBase": 1,
                                          "updatesAgents": False})  # fmt: skip
    kube.objects[("LoRATier", NS, shared)]["status"] = {"currentVersion": 2}
    got = {s.agent: {e.tier: e.version for e in s.entries} for s in
           desired_stacks(kube, settings, live, Swarm.model_validate(live))}
    assert got["bob"][shared] == 2


def test_the_consistency_judge_accepts_exactly_the_applied_pairs(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    """``stack_is_consistent`` (what the e2e uses on every stack it sees served) refuses both half-mixes."""
    _swarm(kube, settings, swarm_body)
    for _ in range(2):
        _publish(settings, CTX, tmp_path, {"kind": "training"})
    _publish(settings, AGENT, tmp_path, {"kind": "training"})
    _publish(settings, AGENT, tmp_path, _migration_meta(settings, 2, "migration"))  # a2 from c2
    _publish(settings, CTX, tmp_path, _migration_meta(settings, 2, "migration-source"))  # c3: c2 without it
    _publish(settings, CTX, tmp_path, {"kind": "training"})  # c4 on top of the residual

    def ok(ctx: int, agent: int) -> bool:
        entries = [StackEntry(CTX, "context", ctx, _store(settings), NS),
                   StackEntry(AGENT, "agent", agent, _store(settings), NS)]  # fmt: skip
        return stack_is_consistent(entries, StoreView())

    assert [ok(c, 1) for c in (1, 2, 3, 4)] == [True, True, False, False]  # a1 + the residual: lost
    assert [ok(c, 2) for c in (1, 2, 3, 4)] == [False, False, True, True]  # a2 + c2: counted twice
