"""Small helpers shared by the local-cluster integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from dynamiclora_dev.localcluster.rest import Rest

T = TypeVar("T")

LOCAL = {"dynamiclora.io/executor": "local"}


def wait_until(what: str, fn: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value {last!r})")


def job_condition(rest: Rest, namespace: str, name: str) -> str | None:
    """``Complete`` or ``Failed`` once the Job has finished, else None."""
    job = rest.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
    for cond in job.get("status", {}).get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return str(cond["type"])
    return None


def pods(rest: Rest, namespace: str, selector: str) -> list[dict[str, Any]]:
    """Pods of ``namespace`` matching a label selector."""
    items: list[dict[str, Any]] = rest.get(f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": selector})["items"]
    return items


def job(name: str, command: list[str], *, local: bool, gpus: int = 0, **spec: Any) -> dict[str, Any]:
    """A batch/v1 Job running ``command`` in a busybox container (backoffLimit 0)."""
    container: dict[str, Any] = {"name": "main", "image": "busybox:1.36", "command": command}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"test-job": name, **(LOCAL if local else {})}},
                "spec": {"restartPolicy": "Never", "containers": [container], **spec},
            },
        },
    }
