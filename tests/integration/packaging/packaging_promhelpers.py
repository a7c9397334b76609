"""A real Prometheus server on loopback for the packaging tests (Debian's ``prometheus`` package)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "charts" / "dynamiclora" / "files" / "prometheus-rules.yaml"
JOB = "dynamiclora-operator"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's prometheus package (bash hack/install.sh does it)")
    return path


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


class Prom:
    """The HTTP API of a running Prometheus."""

    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            return dict(get_json(url))
        except urllib.error.HTTPError as exc:  # 400 carries the PromQL error in its body
            return dict(json.loads(exc.read()))

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it has a result (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = self.query(expr).get("data", {}).get("result", [])
                if result:
                    return list(result)
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no result for {expr!r} within {timeout} s"
            time.sleep(0.5)


@contextmanager
def prometheus(work: Path, target: str, scrape_every: str = "1s") -> Iterator[Prom]:
    """Run Prometheus scraping ``target`` (host:port) with the chart's alert rules; yields its API."""
    binary = tool("prometheus")
    config = {
        "global": {"scrape_interval": scrape_every, "evaluation_interval": scrape_every},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    with (work / "prometheus.log").open("w") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        prom = Prom(f"http://127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + 60
            while True:  # bounded: until the first scrape of the target succeeded
                assert proc.poll() is None, (work / "prometheus.log").read_text()
                try:
                    up = prom.query(f'up{{job="{JOB}"}}')["data"]["result"]
                    if up and up[0]["value"][1] == "1":
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "prometheus did not scrape the target within 60 s"
                time.sleep(0.5)
            yield prom
        finally:
            proc.terminate()
            proc.wait(timeout=30)
