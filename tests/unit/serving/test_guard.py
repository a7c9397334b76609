"""The guard vLLM loads as middleware: clients reach inference only, the operator everything."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.serving.guard import AdminGuard, route_class
from dynamiclora.serving.launcher import GUARD_MODULE, write_guard

ADMIN, CLIENT = "operator-key", "client-key"


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _call(path: str, key: str | None, method: str = "POST") -> int:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": headers}
    asyncio.run(AdminGuard(_app, ADMIN, [CLIENT])(scope, receive, send))
    return int(sent[0]["status"])


@pytest.mark.parametrize(
    ("path", "none", "client", "admin"),
    [
        ("/v1/completions", 401, 200, 200),
        ("/v1/chat/completions", 401, 200, 200),
        ("/v1/models", 401, 200, 200),
        ("/tokenize", 401, 200, 200),
        ("/v1/load_lora_adapter", 401, 403, 200),
        ("/v1/unload_lora_adapter", 401, 403, 200),
        ("/v1//load_lora_adapter/", 401, 403, 200),  # no slash games
        ("/sleep", 401, 403, 200),
        ("/collective_rpc", 401, 403, 200),
        ("/reset_prefix_cache", 401, 403, 200),
        ("/some_route_a_newer_vllm_adds", 401, 403, 200),
        ("/health", 200, 200, 200),
        ("/metrics", 200, 200, 200),
    ],
)
def test_who_may_call_what(path: str, none: int, client: int, admin: int) -> None:
    assert (_call(path, None), _call(path, CLIENT), _call(path, ADMIN)) == (none, client, admin)
    assert _call(path, "guessed-key") == none if none != 200 else True


def test_malformed_authorization_and_options() -> None:
    assert _call("/v1/completions", f"{CLIENT} ") == 200  # trailing space tolerated
    assert _call("/v1/load_lora_adapter", None, method="OPTIONS") == 200  # CORS preflight carries no key
    assert route_class("v1/load_lora_adapter") == "admin"


def test_it_refuses_to_start_without_distinct_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYNAMICLORA_ADMIN_KEY", raising=False)
    with pytest.raises(RuntimeError, match="must be set"):
        AdminGuard(_app)
    with pytest.raises(RuntimeError, match="must differ"):
        AdminGuard(_app, ADMIN, [ADMIN])


def test_the_mounted_module_needs_only_the_standard_library(tmp_path: Path) -> None:
    # As it runs in the vLLM image: a fresh interpreter that can import nothing of this repository.
    path = write_guard(tmp_path)
    assert importlib.util.spec_from_file_location(GUARD_MODULE, path) is not None
    code = (f"import sys; sys.path = [p for p in sys.path if 'site-packages' not in p]; "
            f"sys.path.insert(0, {str(tmp_path)!r}); "
            f"import {GUARD_MODULE} as g; print(g.route_class('/v1/unload_lora_adapter'))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "admin", out.stderr
