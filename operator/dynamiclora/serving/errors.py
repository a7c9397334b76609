"""Typed errors of the serving layer and the parser that maps vLLM error responses onto them.

vLLM's error body changed shape across versions, so the class is chosen from the HTTP status and the
body's structure, never from its message text:

* current (0.6+): ``{"error": {"message": ..., "type": ..., "param": ..., "code": 404}}``
* older: ``{"object": "error", "message": ..., "type": ..., "param": ..., "code": 404}``
* auth middleware: ``{"error": "Unauthorized"}``
* FastAPI/Starlette defaults: ``{"detail": ...}``, or a non-JSON body from a proxy.
"""

from __future__ import annotations

import json
from typing import Any


class ServingError(Exception):
    """Base class of every error raised by :mod:`dynamiclora.serving`."""


class VLLMError(ServingError):
    """An error response (or no response at all) from a vLLM server.

    Attributes:
        status: HTTP status code, or None when no response arrived.
        err_type: the server's error type (e.g. ``NotFoundError``), or None.
        message: the server's human-readable message (for logs only, never matched on).
        param: the offending request field, when the server names one.
        url: the request URL.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        err_type: str | None = None,
        param: str | None = None,
        url: str = "",
    ) -> None:
        self.status = status
        self.err_type = err_type
        self.message = message
        self.param = param
        self.url = url
        where = f" ({url})" if url else ""
        code = f"HTTP {status}" if status is not None else "no response"
        kind = f" {err_type}" if err_type else ""
        super().__init__(f"{code}{kind}{where}: {message}")

    @property
    def reason(self) -> str:
        """A short, low-cardinality label for metrics."""
        return "http_error"


class VLLMConnectionError(VLLMError):
    """The server could not be reached (refused, reset, timed out) after every retry."""

    @property
    def reason(self) -> str:
        return "connection"


class VLLMAuthError(VLLMError):
    """401/403: the API key is missing or wrong."""

    @property
    def reason(self) -> str:
        return "auth"


class VLLMBadRequest(VLLMError):
    """400/422: the server refused the request (e.g. the name is taken or conflicts with the base)."""

    @property
    def reason(self) -> str:
        return "bad_request"


class VLLMNotFound(VLLMError):
    """404: the model/adapter (or the endpoint, when runtime LoRA updating is disabled) is unknown."""

    @property
    def reason(self) -> str:
        return "not_found"


class VLLMServerError(VLLMError):
    """5xx after every retry: vLLM failed (for a load: the adapter files could not be loaded)."""

    @property
    def reason(self) -> str:
        return "server_error"


class AdapterRejected(ServingError, ValueError):
    """The adapter was refused before any call to the server (rank too large, base model mismatch)."""

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class VerificationFailed(ServingError):
    """The server answered, but not with the intended adapter's output."""

    def __init__(self, message: str, *, rolled_back: bool = False) -> None:
        self.rolled_back = rolled_back
        self.reason = "verification"
        super().__init__(message + (" (rolled back to the previous version)" if rolled_back else ""))


def _class_for_status(status: int) -> type[VLLMError]:
    if status in (401, 403):
        return VLLMAuthError
    if status == 404:
        return VLLMNotFound
    if status in (400, 409, 422):
        return VLLMBadRequest
    if status >= 500:
        return VLLMServerError
    return VLLMError


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def parse_error(status: int, body: bytes, *, url: str = "") -> VLLMError:
    """Build the typed error for an HTTP error response.

    Args:
        status: the HTTP status code (>= 400).
        body: the raw response body.
        url: the request URL, kept for the message.

    Returns:
        An instance of the :class:`VLLMError` subclass that matches ``status``.
    """
    cls = _class_for_status(status)
    text = body.decode("utf-8", errors="replace")
    try:
        data: Any = json.loads(text) if text else None
    except ValueError:
        data = None
    message, err_type, param = text.strip() or f"HTTP {status}", None, None
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict):  # current shape
            message = _as_str(inner.get("message")) or message
            err_type = _as_str(inner.get("type"))
            param = _as_str(inner.get("param"))
        elif data.get("object") == "error":  # older shape
            message = _as_str(data.get("message")) or message
            err_type = _as_str(data.get("type"))
            param = _as_str(data.get("param"))
        elif isinstance(inner, str):  # auth middleware
            message = inner
        elif "detail" in data:  # FastAPI default handlers
            message = _as_str(data["detail"]) or message
    return cls(message, status=status, err_type=err_type, param=param, url=url)
