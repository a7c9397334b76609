"""The vLLM client's own behaviour: error parsing by structure/status, retries, auth header.

httpx.MockTransport stands in for the network here; vLLM itself is exercised in tests/integration/serving.
"""

from __future__ import annotations

import json

import httpx
import pytest

from dynamiclora.serving.client import ClientConfig, RequestRecord, VLLMClient
from dynamiclora.serving.errors import (
    VLLMAuthError,
    VLLMBadRequest,
    VLLMConnectionError,
    VLLMError,
    VLLMNotFound,
    VLLMServerError,
    parse_error,
)

FAST = ClientConfig(retries=3, backoff_base_s=0.0, backoff_max_s=0.0)


def test_parse_current_shape() -> None:
    body = json.dumps({"error": {"message": "gone", "type": "NotFoundError", "param": "model", "code": 404}})
    err = parse_error(404, body.encode(), url="http://x/v1/unload_lora_adapter")
    assert type(err) is VLLMNotFound
    assert (err.status, err.err_type, err.param, err.message) == (404, "NotFoundError", "model", "gone")
    assert "http://x/v1/unload_lora_adapter" in str(err)


def test_parse_old_shape() -> None:
    body = json.dumps({"object": "error", "message": "dup", "type": "InvalidUserInput", "param": None,
                       "code": 400})
    err = parse_error(400, body.encode())
    assert type(err) is VLLMBadRequest
    assert (err.err_type, err.message) == ("InvalidUserInput", "dup")


def test_parse_auth_and_detail_and_text() -> None:
    auth = parse_error(401, b'{"error": "Unauthorized"}')
    assert type(auth) is VLLMAuthError and auth.message == "Unauthorized" and auth.err_type is None
    detail = parse_error(422, json.dumps({"detail": [{"loc": ["body", "lora_name"]}]}).encode())
    assert type(detail) is VLLMBadRequest and "lora_name" in detail.message
    proxy = parse_error(502, b"<html>bad gateway</html>")
    assert type(proxy) is VLLMServerError and "bad gateway" in proxy.message
    assert type(parse_error(418, b"")) is VLLMError


def test_class_depends_on_status_not_message() -> None:
    # A message that *says* "not found" with status 500 is a server error, not a NotFound.
    err = parse_error(500, json.dumps({"error": {"message": "adapter not found", "type": "X", "code": 500}})
                      .encode())
    assert type(err) is VLLMServerError


async def test_retries_5xx_then_succeeds_and_records_attempts() -> None:
    calls: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            return httpx.Response(503, json={"error": {"message": "busy", "type": "X", "code": 503}})
        return httpx.Response(200, json={"data": [{"id": "base", "root": "/m", "parent": None},
                                                  {"id": "a", "root": "/a1", "parent": "base"}]})

    log: list[RequestRecord] = []
    async with VLLMClient("http://pod:8000", FAST, transport=httpx.MockTransport(handler),
                          on_request=log.append) as c:
        adapters = await c.list_adapters()
    assert list(adapters) == ["a"] and adapters["a"].root == "/a1"
    assert [r.status for r in log] == [503, 503, 200]


async def test_gives_up_after_retries_with_typed_error() -> None:
    n = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal n
        n += 1
        raise httpx.ConnectError("refused", request=req)

    async with VLLMClient("http://pod:8000", FAST, transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(VLLMConnectionError) as exc:
            await c.load_adapter("a", "/a1")
    assert n == FAST.retries + 1
    assert exc.value.status is None and exc.value.reason == "connection"


async def test_4xx_is_not_retried_and_bearer_is_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(400, json={"error": {"message": "m", "type": "InvalidUserInput", "code": 400}})

    cfg = ClientConfig(api_key="s3cret", retries=3, backoff_base_s=0.0, backoff_max_s=0.0)
    async with VLLMClient("http://pod:8000/", cfg, transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(VLLMBadRequest):
            await c.load_adapter("a", "/a1", inplace=True)
    assert len(seen) == 1
    assert seen[0].headers["Authorization"] == "Bearer s3cret"
    assert json.loads(seen[0].content) == {"lora_name": "a", "lora_path": "/a1", "load_inplace": True}


async def test_completion_returns_token_ids() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        assert body["prompt"] == [1, 2] and body["return_token_ids"] is True and body["temperature"] == 0.0
        return httpx.Response(200, json={"model": "a", "choices": [{"text": "x y", "token_ids": [7, 8]}]})

    async with VLLMClient("http://pod:8000", FAST, transport=httpx.MockTransport(handler)) as c:
        out = await c.complete("a", [1, 2], max_tokens=2)
    assert out.token_ids == (7, 8) and out.text == "x y"


def test_backoff_doubles_and_caps() -> None:
    cfg = ClientConfig(backoff_base_s=0.1, backoff_max_s=0.35)
    assert [cfg.backoff(i) for i in range(4)] == [0.1, 0.2, 0.35, 0.35]
    with pytest.raises(ValueError, match="retries"):
        ClientConfig(retries=-1)
