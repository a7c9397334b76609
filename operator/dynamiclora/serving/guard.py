"""Only the operator changes what a vLLM pod serves: an ASGI middleware loaded into vLLM's own server.

vLLM serves inference and runtime adapter management (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``)
on one port behind one optional API key, so any client holding the key (or any pod, without one) could
unload an agent or swap in another adapter. The operator mounts this file into every vLLM container (a
ConfigMap) and starts vLLM with ``--middleware dynamiclora_guard.AdminGuard``; the guard then decides:

* the *operator's key* (``DYNAMICLORA_ADMIN_KEY``) may call everything;
* a *client key* (``DYNAMICLORA_CLIENT_KEY``) may call the inference API only: ``/v1/*`` except the
  adapter-management routes, ``/tokenize``, ``/detokenize``;
* without a key: only ``/health``, ``/ping``, ``/version`` and ``/metrics`` (probes, Prometheus);
* everything else (adapter management, ``/sleep``, ``/collective_rpc``, ``/reset_prefix_cache``, any
  route a newer vLLM adds) needs the operator's key: an allow-list for clients, not a deny-list.

Missing or wrong key: 401; a client key on an operator route: 403. If the keys are not set the guard
refuses to start (vLLM then does not start), so a pod never serves unguarded. The module imports nothing
beyond the standard library: it runs in the vLLM image, which does not have DynamicLoRA.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

ADMIN_KEY_ENV = "DYNAMICLORA_ADMIN_KEY"
CLIENT_KEY_ENV = "DYNAMICLORA_CLIENT_KEY"
OPEN_PATHS = frozenset({"/health", "/ping", "/version", "/metrics"})
CLIENT_PATHS = frozenset({"/tokenize", "/detokenize"})
ADMIN_ONLY = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def route_class(path: str) -> str:
    """``open``, ``client`` or ``admin``: who may call ``path``."""
    path = "/" + "/".join(part for part in path.split("/") if part)  # "/v1//x/" is "/v1/x" to a router too
    if path in OPEN_PATHS:
        return "open"
    if path in ADMIN_ONLY:
        return "admin"
    if path in CLIENT_PATHS or path.startswith("/v1/"):
        return "client"
    return "admin"


class AdminGuard:
    """Pure ASGI middleware (see the module docstring)."""

    def __init__(self, app: App, admin_key: str | None = None, client_keys: list[str] | None = None) -> None:
        admin = admin_key if admin_key is not None else os.environ.get(ADMIN_KEY_ENV, "")
        clients = client_keys if client_keys is not None else [os.environ.get(CLIENT_KEY_ENV, "")]
        if not admin or not all(clients) or not clients:
            raise RuntimeError(f"dynamiclora_guard: {ADMIN_KEY_ENV} and {CLIENT_KEY_ENV} must be set")
        if admin in clients:
            raise RuntimeError("dynamiclora_guard: the operator's key must differ from the client key")
        self.app = app
        self.admin = _digest(admin)
        self.clients = [_digest(k) for k in clients]

    def caller(self, headers: list[tuple[bytes, bytes]]) -> str:
        """``admin``, ``client`` or ``none`` from the request's ``Authorization: Bearer`` header."""
        value = next((v for k, v in headers if k.lower() == b"authorization"), b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "none"
        got = _digest(token.strip())
        if hmac.compare_digest(got, self.admin):
            return "admin"
        return "client" if any(hmac.compare_digest(got, k) for k in self.clients) else "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = str(scope["path"]).removeprefix(str(scope.get("root_path") or ""))
        needed, caller = route_class(path), self.caller(list(scope.get("headers") or []))
        if needed == "open" or caller == "admin" or (needed == "client" and caller == "client"):
            await self.app(scope, receive, send)
            return
        status, why = (403, "this route is the operator's") if caller == "client" else (401, "Unauthorized")
        await _refuse(scope, send, status, why)


async def _refuse(scope: Scope, send: Send, status: int, why: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": why}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
