"""Zero-downtime hot-swap of adapter versions behind stable served names (see docs/serving.md).

Strategy: vLLM 0.32's ``load_lora_adapter`` with ``load_inplace=true`` keeps the served name and its
internal adapter id and replaces the weights between two engine steps, so a client that keeps using the
stable name is never told the model does not exist. Each version lives at its own path (vLLM keys its
prefix cache on the path). After the load the new version is warmed up and, when a fingerprint is known,
verified token for token before the swap is reported; a mismatch rolls back to the previous path.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import httpx

from dynamiclora.serving import metrics
from dynamiclora.serving.adapters import AdapterSpec, PodTarget
from dynamiclora.serving.client import ClientConfig, RequestHook, VLLMClient
from dynamiclora.serving.errors import AdapterRejected, ServingError, VerificationFailed, VLLMBadRequest
from dynamiclora.serving.reconcile import ReconcileResult, reconcile_pod

log = logging.getLogger(__name__)

Action = Literal["loaded", "swapped", "unchanged"]

_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def pod_lock(base_url: str) -> asyncio.Lock:
    """The lock that serializes adapter loads on one pod (per event loop, shared by all swappers)."""
    locks = _LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(base_url.rstrip("/"), asyncio.Lock())


@dataclass(frozen=True)
class SwapConfig:
    """Warm-up and verification policy."""

    require_fingerprint: bool = field(
        default=False, metadata={"help": "refuse adapters without a fingerprint instead of warm-up only"}
    )
    warmup_prompt: str = field(default="the", metadata={"help": "prompt used when there is no fingerprint"})
    rollback: bool = field(
        default=True, metadata={"help": "on a fingerprint mismatch restore the previous version"}
    )

    def __post_init__(self) -> None:
        if not self.warmup_prompt:
            raise ValueError("SwapConfig.warmup_prompt must be non-empty")


@dataclass(frozen=True)
class SwapResult:
    """Outcome of moving one name to one version on one pod."""

    pod: str
    name: str
    version: str
    path: str
    previous_path: str | None
    action: Action
    verified: bool  # True: fingerprint matched; False: warmed up (or unchanged) without a fingerprint
    load_s: float
    verify_s: float
    total_s: float


@dataclass
class FleetSwapResult:
    """Outcome of one swap on every pod of a set."""

    results: dict[str, SwapResult] = field(default_factory=dict)
    errors: dict[str, ServingError] = field(default_factory=dict)
    total_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


# (pod URL, served name, adapter path) this process has seen answer as it should, newest last; bounded.
_VERIFIED: OrderedDict[tuple[str, str, str], None] = OrderedDict()
MAX_VERIFIED = 100_000


def _remember(pod: PodTarget, spec: AdapterSpec) -> None:
    _VERIFIED[(pod.base_url, spec.name, spec.path)] = None
    _VERIFIED.move_to_end((pod.base_url, spec.name, spec.path))
    while len(_VERIFIED) > MAX_VERIFIED:
        _VERIFIED.popitem(last=False)


def _count_failure(exc: BaseException) -> None:
    reason = getattr(exc, "reason", None)
    metrics.FAILURES.labels(reason=reason if isinstance(reason, str) else "other").inc()


class HotSwapper:
    """Loads, swaps, verifies and unloads adapters on vLLM pods.

    Args:
        client_config: timeouts, retries and API key used for every pod.
        swap_config: warm-up and verification policy.
        transport: httpx transport for every client (tests only).
        on_request: hook called after every HTTP attempt (audits, tests).
    """

    def __init__(
        self,
        client_config: ClientConfig | None = None,
        swap_config: SwapConfig | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_request: RequestHook | None = None,
    ) -> None:
        self.client_config = client_config or ClientConfig()
        self.swap_config = swap_config or SwapConfig()
        self._transport = transport
        self._on_request = on_request
        self._clients: dict[str, VLLMClient] = {}

    def client(self, pod: PodTarget) -> VLLMClient:
        key = pod.base_url.rstrip("/")
        if key not in self._clients:
            self._clients[key] = VLLMClient(
                key, self.client_config, transport=self._transport, on_request=self._on_request
            )
        return self._clients[key]

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()

    async def __aenter__(self) -> HotSwapper:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _precheck(self, pod: PodTarget, spec: AdapterSpec) -> None:
        pod.check(spec)
        if self.swap_config.require_fingerprint and spec.fingerprint is None:
            raise AdapterRejected(
                f"adapter {spec.name!r} version {spec.version} ({spec.path}) has no fingerprint and "
                "SwapConfig.require_fingerprint is set",
                reason="no_fingerprint",
            )

    async def ensure(self, pod: PodTarget, spec: AdapterSpec) -> SwapResult:
        """Make ``pod`` serve ``spec`` under ``spec.name``: load, swap in place, or nothing to do.

        Raises:
            AdapterRejected: before any HTTP call, when the pod cannot serve the adapter.
            VerificationFailed: the served output is not the fingerprint's.
            VLLMError: the server failed or could not be reached.
        """
        start = time.perf_counter()
        try:
            self._precheck(pod, spec)
            async with pod_lock(pod.base_url):
                result = await self._ensure_locked(pod, spec, start)
        except ServingError as exc:
            _count_failure(exc)
            raise
        metrics.SWAP_SECONDS.labels(action=result.action).observe(result.total_s)
        return result

    async def _ensure_locked(self, pod: PodTarget, spec: AdapterSpec, start: float) -> SwapResult:
        client = self.client(pod)
        current = (await client.list_adapters()).get(spec.name)
        previous = current.root if current is not None else None
        if previous == spec.path:
            if (pod.base_url, spec.name, spec.path) in _VERIFIED:
                return SwapResult(pod.label, spec.name, spec.version, spec.path, previous, "unchanged",
                                  False, 0.0, 0.0, time.perf_counter() - start)
            # Listed but never verified by this process: a swap interrupted between load and check, or a
            # restarted operator. Check it once before counting it as served (a wrong one is unloaded).
            t_verify = time.perf_counter()
            verified = await self._verify(client, pod, spec, None)
            _remember(pod, spec)
            return SwapResult(pod.label, spec.name, spec.version, spec.path, previous, "unchanged",
                              verified, 0.0, time.perf_counter() - t_verify, time.perf_counter() - start)
        t_load = time.perf_counter()
        inplace = current is not None
        try:
            await client.load_adapter(spec.name, spec.path, inplace=inplace)
        except VLLMBadRequest:
            if inplace:
                raise
            # Someone registered the name between our listing and our load: decide from the listing.
            now = (await client.list_adapters()).get(spec.name)
            if now is None:
                raise
            previous, inplace = now.root, True
            if now.root != spec.path:
                await client.load_adapter(spec.name, spec.path, inplace=True)
        metrics.LOADS.labels(kind="inplace" if inplace else "new").inc()
        load_s = time.perf_counter() - t_load
        t_verify = time.perf_counter()
        verified = await self._verify(client, pod, spec, previous)
        _remember(pod, spec)
        verify_s = time.perf_counter() - t_verify
        action: Action = "swapped" if inplace else "loaded"
        log.info("pod %s: %s %s -> version %s (%s) in %.3fs", pod.label, action, spec.name, spec.version,
                 spec.path, time.perf_counter() - start)
        return SwapResult(pod.label, spec.name, spec.version, spec.path, previous, action, verified,
                          load_s, verify_s, time.perf_counter() - start)

    async def _verify(
        self, client: VLLMClient, pod: PodTarget, spec: AdapterSpec, previous: str | None
    ) -> bool:
        fp = spec.fingerprint
        if fp is None:  # warm-up only: proves the name answers with the new weights loaded
            await client.complete(spec.name, self.swap_config.warmup_prompt, max_tokens=1)
            return False
        out = await client.complete(spec.name, fp.prompt_token_ids, max_tokens=len(fp.token_ids))
        if out.token_ids == fp.token_ids:
            return True
        rolled_back = False
        if self.swap_config.rollback:
            if previous is not None:
                await client.load_adapter(spec.name, previous, inplace=True)
            else:  # a name that never served a good version is better absent than wrong
                await client.unload_adapter(spec.name)
            rolled_back = True
        raise VerificationFailed(
            f"pod {pod.label}: adapter {spec.name!r} version {spec.version} ({spec.path}) served tokens "
            f"{list(out.token_ids or ())}, fingerprint expects {list(fp.token_ids)}",
            rolled_back=rolled_back,
        )

    async def swap_all(self, pods: Sequence[PodTarget], spec: AdapterSpec) -> FleetSwapResult:
        """Move ``spec.name`` to ``spec``'s version on every pod, concurrently.

        Every pod is pre-checked first, so an adapter one pod cannot serve touches no pod.
        """
        start = time.perf_counter()
        fleet = FleetSwapResult()
        try:
            for pod in pods:
                self._precheck(pod, spec)
        except AdapterRejected as exc:
            _count_failure(exc)
            raise
        outcomes = await asyncio.gather(*(self.ensure(p, spec) for p in pods), return_exceptions=True)
        for pod, out in zip(pods, outcomes, strict=True):
            if isinstance(out, SwapResult):
                fleet.results[pod.label] = out
            elif isinstance(out, ServingError):
                fleet.errors[pod.label] = out
            else:
                raise out
        fleet.total_s = time.perf_counter() - start
        return fleet

    async def unload(self, pod: PodTarget, name: str) -> bool:
        """Unload ``name`` if loaded; False when it was not loaded (idempotent)."""
        async with pod_lock(pod.base_url):
            return await self._unload_locked(pod, name)

    async def _unload_locked(self, pod: PodTarget, name: str) -> bool:
        client = self.client(pod)
        if name not in await client.list_adapters():
            return False
        try:
            await client.unload_adapter(name)
        except ServingError as exc:
            _count_failure(exc)
            raise
        metrics.UNLOADS.inc()
        return True

    def settled(self, pod: PodTarget, spec: AdapterSpec, listed_root: str | None) -> bool:
        """Whether a pod that lists ``spec.name`` at ``listed_root`` already serves ``spec`` as verified by
        this process: :meth:`ensure` would answer ``unchanged`` after listing the pod again. Counted as such
        (metric included), so a pass costs one listing per pod, not one per adapter."""
        if listed_root != spec.path or (pod.base_url, spec.name, spec.path) not in _VERIFIED:
            return False
        metrics.SWAP_SECONDS.labels(action="unchanged").observe(0.0)
        return True

    async def reconcile(
        self, pod: PodTarget, desired: Mapping[str, AdapterSpec], *, managed_prefix: str,
        keep: Collection[str] = (),
    ) -> ReconcileResult:
        """Bring one pod's loaded set to ``desired``: unload extras, then load or swap each desired one.

        Only names starting with ``managed_prefix`` are ever unloaded, so adapters loaded by others stay;
        names in ``keep`` (their next version is not ready yet) are left loaded as they are.
        Per-adapter failures are collected in the result; server/connection errors of the listing raise.
        """
        return await reconcile_pod(self, pod, desired, managed_prefix=managed_prefix, keep=keep)
