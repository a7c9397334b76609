"""Async client for vLLM's OpenAI-compatible server and its runtime LoRA API.

Only what the operator needs: ``GET /v1/models``, ``POST /v1/load_lora_adapter``,
``POST /v1/unload_lora_adapter``, ``POST /v1/completions`` (warm-up and verification) and ``GET /health``.
Connection errors and 5xx responses are retried with capped exponential backoff; every other error is
raised at once as a typed :class:`~dynamiclora.serving.errors.VLLMError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from dynamiclora.serving.errors import VLLMConnectionError, VLLMError, VLLMServerError, parse_error


@dataclass(frozen=True)
class ClientConfig:
    """Timeouts, retries and credentials of a :class:`VLLMClient`."""

    api_key: str | None = field(default=None, metadata={"help": "sent as 'Authorization: Bearer <key>'"})
    timeout_s: float = field(default=60.0, metadata={"help": "read/write timeout of one HTTP call"})
    connect_timeout_s: float = field(default=5.0, metadata={"help": "TCP connect timeout"})
    retries: int = field(default=3, metadata={"help": "extra attempts after a connection error or 5xx"})
    backoff_base_s: float = field(default=0.2, metadata={"help": "first backoff; doubles per attempt"})
    backoff_max_s: float = field(default=5.0, metadata={"help": "cap of one backoff sleep"})
    retry_statuses: frozenset[int] = field(
        default=frozenset({500, 502, 503, 504}), metadata={"help": "HTTP statuses that are retried"}
    )

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("ClientConfig.timeout_s and connect_timeout_s must be > 0")
        if self.retries < 0:
            raise ValueError("ClientConfig.retries must be >= 0")
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise ValueError("ClientConfig needs 0 <= backoff_base_s <= backoff_max_s")

    def backoff(self, attempt: int) -> float:
        """Sleep before retry number ``attempt`` (0-based)."""
        return float(min(self.backoff_max_s, self.backoff_base_s * (2**attempt)))


@dataclass(frozen=True)
class ModelCard:
    """One entry of ``/v1/models``: the base model or a LoRA adapter (``parent`` set)."""

    id: str
    root: str | None
    parent: str | None

    @property
    def is_adapter(self) -> bool:
        return self.parent is not None


@dataclass(frozen=True)
class Completion:
    """The first choice of a completion: text and, when requested, generated token ids."""

    text: str
    token_ids: tuple[int, ...] | None
    model: str


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP attempt, as seen by the request hook (for audits and tests)."""

    method: str
    path: str
    json: Any
    status: int | None
    elapsed_s: float


RequestHook = Callable[[RequestRecord], None]


class VLLMClient:
    """A client bound to one vLLM server (one pod).

    Args:
        base_url: e.g. ``http://10.0.3.7:8000`` (per-pod address, not a Service).
        config: timeouts, retries and API key.
        transport: an httpx transport (tests pass ``httpx.MockTransport``).
        on_request: called after every HTTP attempt, including failed and retried ones.
    """

    def __init__(
        self,
        base_url: str,
        config: ClientConfig | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_request: RequestHook | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.config = config or ClientConfig()
        self._on_request = on_request
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        timeout = httpx.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> VLLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        url = f"{self.base_url}{path}"
        last: VLLMError | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(self.config.backoff(attempt - 1))
            start = time.perf_counter()
            try:
                resp = await self._http.request(method, path, json=body)
            except httpx.TransportError as exc:  # connect/read errors and timeouts
                self._record(method, path, body, None, start)
                last = VLLMConnectionError(f"{type(exc).__name__}: {exc}", url=url)
                continue
            self._record(method, path, body, resp.status_code, start)
            if resp.status_code < 400:
                return resp
            err = parse_error(resp.status_code, resp.content, url=url)
            if resp.status_code not in self.config.retry_statuses:
                raise err
            last = err
        assert last is not None
        if isinstance(last, VLLMServerError | VLLMConnectionError):
            raise last
        raise VLLMServerError(str(last), status=last.status, url=url)

    def _record(self, method: str, path: str, body: Any, status: int | None, start: float) -> None:
        if self._on_request is not None:
            self._on_request(RequestRecord(method, path, body, status, time.perf_counter() - start))

    async def health(self) -> bool:
        """True when ``/health`` answers 200 (no retries: callers poll)."""
        try:
            resp = await self._http.get("/health")
        except httpx.TransportError:
            return False
        return resp.status_code == 200

    async def metrics_text(self) -> str:
        """``/metrics`` in Prometheus' text format (open without a key: the guard lets probes and scrapers in)."""
        return (await self._request("GET", "/metrics")).text

    async def list_models(self) -> list[ModelCard]:
        """Every served model: the base model(s) and the loaded adapters."""
        data = (await self._request("GET", "/v1/models")).json()
        cards = data.get("data") if isinstance(data, dict) else None
        if not isinstance(cards, list):
            raise VLLMError("/v1/models answered without a 'data' list", url=f"{self.base_url}/v1/models")
        return [
            ModelCard(id=str(c["id"]), root=c.get("root"), parent=c.get("parent"))
            for c in cards
            if isinstance(c, dict) and "id" in c
        ]

    async def list_adapters(self) -> dict[str, ModelCard]:
        """Loaded adapters by served name."""
        return {c.id: c for c in await self.list_models() if c.is_adapter}

    async def load_adapter(self, name: str, path: str, *, inplace: bool = False) -> None:
        """``POST /v1/load_lora_adapter``; ``inplace`` replaces the weights behind an existing name."""
        body = {"lora_name": name, "lora_path": path, "load_inplace": inplace}
        await self._request("POST", "/v1/load_lora_adapter", body)

    async def unload_adapter(self, name: str) -> None:
        """``POST /v1/unload_lora_adapter``."""
        await self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    async def complete(
        self,
        model: str,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 8,
        temperature: float = 0.0,
        ignore_eos: bool = True,
    ) -> Completion:
        """A greedy (by default) completion, returning the generated token ids too."""
        body = {
            "model": model,
            "prompt": prompt if isinstance(prompt, str) else list(prompt),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "ignore_eos": ignore_eos,
            "return_token_ids": True,
        }
        data = (await self._request("POST", "/v1/completions", body)).json()
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError) as exc:
            url = f"{self.base_url}/v1/completions"
            raise VLLMError("completion answered without choices", url=url) from exc
        ids = choice.get("token_ids")
        return Completion(
            text=str(choice.get("text", "")),
            token_ids=tuple(int(t) for t in ids) if isinstance(ids, list) else None,
            model=str(data.get("model", model)),
        )
