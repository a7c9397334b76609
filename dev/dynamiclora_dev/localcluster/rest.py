"""A very small Kubernetes REST client (stdlib only) for the local cluster's own needs.

The control-plane supervisor and the executor only create nodes, read/patch pods, read Secrets and
ConfigMaps and watch pods; the stdlib keeps that typed and fast to import, with no dependency on the
kubernetes client's configuration machinery.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any


class ApiError(RuntimeError):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:500]}")
        self.status = status


class Rest:
    """Bearer-token HTTPS client for one API server."""

    def __init__(self, server: str, token: str, ca_file: str | None = None, timeout: float = 10.0) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        if ca_file:
            self._ssl = ssl.create_default_context(cafile=ca_file)
        else:
            self._ssl = ssl.create_default_context()
            self._ssl.check_hostname = False
            self._ssl.verify_mode = ssl.CERT_NONE

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        url = self.server + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout, context=self._ssl)
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, method, path, exc.read().decode(errors="replace")) from exc

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """One request; returns the decoded JSON answer."""
        with self._request(method, path, body, **kwargs) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET ``path``."""
        return self.call("GET", path, params=params)

    def text(self, path: str) -> str:
        """GET ``path`` as text (the API server's ``/metrics``)."""
        with self._request("GET", path) as resp:
            return str(resp.read().decode())

    def get_or_none(self, path: str) -> Any:
        """GET ``path``, or None on 404."""
        try:
            return self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST ``body`` to the collection ``path``."""
        return self.call("POST", path, body)

    def patch_status(self, path: str, patch: Mapping[str, Any]) -> Any:
        """Strategic-merge-patch the status subresource of the object at ``path``."""
        return self.call("PATCH", path + "/status", patch, content_type="application/strategic-merge-patch+json")

    def watch(self, path: str, params: Mapping[str, str], timeout: float) -> Iterator[dict[str, Any]]:
        """Stream watch events (``{"type": ..., "object": ...}``) of a collection."""
        query = {**params, "watch": "1", "allowWatchBookmarks": "true"}
        with self._request("GET", path, params=query, timeout=timeout) as resp:
            for line in resp:
                if line.strip():
                    yield json.loads(line)
