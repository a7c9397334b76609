"""Which watch events trigger a reconcile (the operator's generation predicate)."""

from __future__ import annotations

import pytest

from dynamiclora.controllers.handlers import needs_reconcile


@pytest.mark.parametrize(
    ("event", "body", "expected"),
    [
        (None, {"metadata": {"generation": 1}}, True),  # listed at start-up, never reconciled
        ("ADDED", {"metadata": {"generation": 1}, "status": {}}, True),
        ("MODIFIED", {"metadata": {"generation": 2}, "status": {"observedGeneration": 1}}, True),  # spec changed
        ("MODIFIED", {"metadata": {"generation": 2}, "status": {"observedGeneration": 2}}, False),  # our own write
        ("DELETED", {"metadata": {"generation": 3}, "status": {"observedGeneration": 2}}, False),
        ("MODIFIED", {"metadata": {"generation": 3, "deletionTimestamp": "2026-11-22T00:00:00Z"}}, False),
    ],
)
def test_needs_reconcile(event: str | None, body: dict[str, object], expected: bool) -> None:
    assert needs_reconcile(event, body) is expected


def test_a_stuck_object_delays_only_itself(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """Issue 18: a Swarm whose pass hangs (a vLLM pod answering /health but not /v1/*) does not hold the
    resync loop: the other Swarms, the tiers and the policies keep being reconciled, and the stuck one is
    not queued again while its pass runs."""
    import asyncio
    from collections import Counter
    from typing import Any

    from dynamiclora.controllers import handlers
    from dynamiclora.settings import OperatorSettings

    from .fakekube import FakeKube

    kube = FakeKube()
    for kind, name in [("Swarm", "stuck"), ("Swarm", "fine"), ("LoRATier", "t"), ("MigrationPolicy", "p")]:
        kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": "ns"}})
    calls: Counter[str] = Counter()

    async def handle(rt: Any, body: Any) -> None:
        calls[body["metadata"]["name"]] += 1
        if body["metadata"]["name"] == "stuck":
            await asyncio.Event().wait()  # never answers

    monkeypatch.setattr(handlers, "KINDS", {p: (k, handle) for p, (k, _) in handlers.KINDS.items()})
    rt = handlers.Runtime(kube, OperatorSettings(namespace="ns", resync_seconds=0.01, reconcile_deadline_seconds=0.05))

    async def run() -> None:
        loop = asyncio.create_task(handlers.resync_forever(rt, concurrency=1))
        for _ in range(1000):  # until the others had 5 passes each (10 s at most, on any machine)
            await asyncio.sleep(0.01)
            if min(calls["fine"], calls["t"], calls["p"]) >= 5:
                break
        loop.cancel()

    asyncio.run(run())
    assert calls["stuck"] == 1, calls
    assert min(calls["fine"], calls["t"], calls["p"]) >= 5, calls


def test_a_body_read_before_another_pass_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resync listing taken before a spec change, whose pass runs only after the change's own pass (it waited
    for the object's lock), must not reconcile the old spec: it would re-apply the old template to the tiers
    (CI saw a 2-node training launched as 1 process) and merge the old status back. It reconciles the object
    as it is now; a body no other pass overtook is used as given (no extra read)."""
    import asyncio
    import copy
    from typing import Any

    from dynamiclora.controllers import handlers
    from dynamiclora.settings import OperatorSettings

    from .fakekube import FakeKube

    kube = FakeKube()
    old = kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "Swarm",
                    "metadata": {"name": "s", "namespace": "ns", "generation": 1}, "spec": {"nodes": 1}})  # fmt: skip
    listed = copy.deepcopy(old)  # the resync's listing, taken before the patch
    new = kube.add({**old, "metadata": {**old["metadata"], "generation": 2}, "spec": {"nodes": 2}})
    seen_specs: list[int] = []
    gets = 0
    real_get = kube.get

    def counting_get(*args: Any) -> Any:
        nonlocal gets
        gets += 1
        return real_get(*args)

    monkeypatch.setattr(kube, "get", counting_get)

    async def handle(rt: Any, body: Any) -> None:
        seen_specs.append(body["spec"]["nodes"])

    rt = handlers.Runtime(kube, OperatorSettings(namespace="ns"))

    async def run() -> None:
        before = rt.seen("Swarm", listed)  # what the resync loop records ahead of its listing
        await handlers.reconcile_now(rt, "Swarm", handle, copy.deepcopy(new), rt.seen("Swarm", new))  # the event
        await handlers.reconcile_now(rt, "Swarm", handle, listed, before)  # the resync's pass, later
        await handlers.reconcile_now(rt, "Swarm", handle, copy.deepcopy(new), rt.seen("Swarm", new))

    asyncio.run(run())
    assert seen_specs == [2, 2, 2]
    assert gets == 1  # only the overtaken body was read again
