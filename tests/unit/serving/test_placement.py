"""Placement of agents' adapters on vLLM pods (issue 19): bounded, within room, balanced, sticky."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dynamiclora.serving.placement import Slot, place


def _loads(pods: dict[str, list[str]]) -> Counter[str]:
    return Counter(p for ps in pods.values() for p in ps)


def test_a_thousand_agents_on_eight_pods_stay_within_room_and_get_their_replicas() -> None:
    agents = [f"agent-{i:04d}" for i in range(1000)]
    slots = [Slot(f"vllm-{i}", 300) for i in range(8)]
    got = place(agents, slots, 2)
    assert all(len(p) == 2 and len(set(p)) == 2 for p in got.pods.values()) and not got.short
    loads = _loads(got.pods)
    assert max(loads.values()) <= 300 and max(loads.values()) - min(loads.values()) <= 1  # 250 each


def test_room_runs_out_on_extra_replicas_first() -> None:
    agents = [f"a{i}" for i in range(10)]
    got = place(agents, [Slot("p0", 6), Slot("p1", 6)], 2)  # 12 places for 20 wanted
    assert all(len(p) >= 1 for p in got.pods.values())  # everyone is served somewhere
    assert sum(got.short.values()) == 8 and max(_loads(got.pods).values()) <= 6


def test_all_pods_when_there_are_fewer_than_the_replicas() -> None:
    got = place(["a", "b"], [Slot("p0")], 2)
    assert got.pods == {"a": ["p0"], "b": ["p0"]} and not got.short


def test_sticky_only_what_must_move_moves() -> None:
    agents = [f"a{i}" for i in range(40)]
    slots = [Slot(f"p{i}", 30) for i in range(4)]
    first = place(agents, slots, 2)
    assert place(agents, slots, 2, first.pods).pods == first.pods  # a second pass moves nothing
    # p3 goes away: only the adapters it held move, and they move onto the others.
    after = place(agents, slots[:3], 2, first.pods)
    moved = {a for a in agents if set(after.pods[a]) != set(first.pods[a])}
    assert moved == {a for a in agents if "p3" in first.pods[a]}
    assert all(set(first.pods[a]) - {"p3"} <= set(after.pods[a]) for a in agents)
    assert max(_loads(after.pods).values()) <= 30 and not after.short  # 80 wanted, 90 places
    # Room shrinks on p0: the extra adapters leave p0 and nothing else moves.
    shrunk = place(agents, [Slot("p0", 10), *slots[1:]], 2, first.pods)
    assert _loads(shrunk.pods)["p0"] == 10
    assert all(set(first.pods[a]) - {"p0"} <= set(shrunk.pods[a]) for a in agents)


def test_a_previous_placement_on_unknown_pods_or_beyond_the_replicas_is_dropped() -> None:
    got = place(["a"], [Slot("p0"), Slot("p1"), Slot("p2")], 1, {"a": ["gone", "p2", "p1"]})
    assert got.pods == {"a": ["p2"]}


def test_kept_extra_replicas_never_cost_another_agent_its_only_one() -> None:
    """Room for 3 on the pods left: a and b had 2 replicas each, c had one on the pod that went. Keeping a's
    and b's second replicas would leave c with none; each agent gets one first."""
    got = place(["a", "b", "c"], [Slot("p0", 2), Slot("p1", 1)], 2,
                {"a": ["p0", "p1"], "b": ["p0", "p1"], "c": ["gone"]})  # fmt: skip
    assert all(len(p) >= 1 for p in got.pods.values()) and got.pods["a"] == ["p0"] and got.pods["b"] == ["p0"]
    assert got.pods["c"] == ["p1"] and got.short == {"a": 1, "b": 1, "c": 1}


@pytest.mark.parametrize("seed", range(5))
def test_random_worlds_never_overfill_a_pod(seed: int) -> None:
    rng = random.Random(seed)
    agents = [f"a{i}" for i in range(rng.randint(1, 60))]
    slots = [Slot(f"p{i}", rng.choice([None, 1, 3, 10])) for i in range(rng.randint(1, 6))]
    previous = {a: rng.sample([s.pod for s in slots], k=min(2, len(slots))) for a in agents if rng.random() < 0.5}
    got = place(agents, slots, rng.randint(1, 3), previous)
    loads = _loads(got.pods)
    assert all(s.room is None or loads[s.pod] <= s.room for s in slots)
    assert all(len(set(p)) == len(p) for p in got.pods.values())
    # Nobody has two while somebody has none (unless the pods' room is all taken by first replicas).
    if any(not p for p in got.pods.values()):
        assert all(len(p) <= 1 for p in got.pods.values())


def test_replicas_must_be_positive() -> None:
    with pytest.raises(ValueError, match="replicas"):
        place(["a"], [Slot("p0")], 0)


def test_named_agents_get_more_replicas_and_the_others_keep_theirs() -> None:
    slots = [Slot(f"p{i}") for i in range(4)]
    got = place(["a", "b"], slots, 1, {"a": ["p2"]}, more={"a": 3})
    assert len(got.pods["a"]) == 3 and "p2" in got.pods["a"] and len(got.pods["b"]) == 1 and not got.short
    cooled = place(["a", "b"], slots, 1, got.pods)  # no longer hot: back to one, on a pod it had
    assert len(cooled.pods["a"]) == 1 and set(cooled.pods["a"]) <= set(got.pods["a"])
    assert cooled.pods["b"] == got.pods["b"]
    with pytest.raises(ValueError, match="replicas"):
        place(["a"], slots, 1, more={"a": 0})


def _metrics(series: list[tuple[str, str, float]]) -> str:
    """/metrics as vLLM's Prometheus logger writes vllm:lora_requests_info: (running, waiting, last seen)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    gauge = Gauge("vllm:lora_requests_info", "Running stats on lora requests.",
                  ["max_lora", "waiting_lora_adapters", "running_lora_adapters"], registry=registry)  # fmt: skip
    for running, waiting, when in series:
        gauge.labels("2", waiting, running).set(when)
    return generate_latest(registry).decode()


def test_queued_adapters_are_those_seen_waiting_since_the_cutoff() -> None:
    from dynamiclora.serving.placement import queued_adapters

    text = _metrics([("s-a,s-b", "s-c,s-d", 1000.0), ("s-a", "s-e", 500.0), ("s-a,s-b", "", 2000.0)])
    assert queued_adapters(text, 900.0) == {"s-c", "s-d"}
    assert queued_adapters(text, 0.0) == {"s-c", "s-d", "s-e"}
    assert queued_adapters("# no vLLM here\nup 1\n", 0.0) == set()
