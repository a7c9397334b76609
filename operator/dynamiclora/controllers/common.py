"""Helpers shared by the reconcilers: parsing with clear errors, events with conditions."""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dynamiclora.api.common import duration_seconds
from dynamiclora.api.conditions import EventType, Reason
from dynamiclora.api.validate import validate_document
from dynamiclora.builders.names import ANNOTATION_INPUTS, ANNOTATION_TARGET, LABEL_COMPONENT
from dynamiclora.kube import Kube, Obj

M = TypeVar("M", bound=BaseModel)


class InvalidSpec(Exception):
    """The object cannot be reconciled until the user changes it (a PermanentError for kopf)."""

    reason: Reason = Reason.INVALID_SPEC


class PolicyDenied(InvalidSpec):
    """The spec names an image, service account or Secret the operator's policy does not allow."""

    reason = Reason.POLICY_DENIED


class WaitFor(Exception):
    """Something the object depends on is not there yet; retry after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 10.0) -> None:
        super().__init__(message)
        self.delay = delay


_PARSED: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_PARSED_LOCK = threading.Lock()
_PARSED_MAX = 64


def parse(model: type[M], body: Obj) -> M:
    """Validate ``body`` with the API model; :class:`InvalidSpec` lists every problem with its field.

    Results are cached by (model, uid, resourceVersion): every tier of a 1,000-agent swarm parses that
    Swarm, and the same resourceVersion always holds the same spec. Callers must not mutate the result.
    """
    meta = body.get("metadata", {})
    key = (model.__name__, str(meta.get("uid", "")), str(meta.get("resourceVersion", "")))
    if key[1] and key[2]:
        with _PARSED_LOCK:
            hit = _PARSED.get(key)
            if hit is not None:
                _PARSED.move_to_end(key)
                return hit  # type: ignore[no-any-return]
    result = _parse(model, body)
    if key[1] and key[2]:
        with _PARSED_LOCK:
            _PARSED[key] = result
            while len(_PARSED) > _PARSED_MAX:
                _PARSED.popitem(last=False)
    return result


def _parse(model: type[M], body: Obj) -> M:
    doc = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
    doc["metadata"] = {k: v for k, v in body.get("metadata", {}).items() if k in ("name", "namespace")}
    try:
        return model.model_validate(doc)
    except ValidationError:
        problems = validate_document(doc, None, body.get("kind", "object"), 0)
        raise InvalidSpec("; ".join(f"{p.path}: {p.message}" for p in problems) or "invalid spec") from None


def generation(body: Obj) -> int | None:
    """metadata.generation of an object."""
    gen = body.get("metadata", {}).get("generation")
    return int(gen) if gen is not None else None


@dataclass
class Event:
    """A Kubernetes event to record on the reconciled object."""

    type: EventType
    reason: Reason
    message: str


def parse_time(s: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp as Kubernetes writes it, or None."""
    if not s:
        return None
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


duration_s = duration_seconds


def job_state(job: Obj) -> str:
    """Complete, Failed or Running, from a Job's conditions."""
    for c in job.get("status", {}).get("conditions", []) or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
            return str(c["type"])
    return "Running"


def consolidation_touching(kube: Kube, ns: str, tier: str) -> str | None:
    """A running consolidation Job that reads or writes ``tier``, if any.

    It lists Jobs: call it only when the answer matters (training is due, a store mark arrived).
    """
    for job in kube.list("Job", ns, {LABEL_COMPONENT: "consolidator"}):
        ann = job["metadata"].get("annotations") or {}
        touched = {ann.get(ANNOTATION_TARGET, ""), *str(ann.get(ANNOTATION_INPUTS, "")).split(",")}
        if tier in touched and job_state(job) == "Running":
            return str(job["metadata"]["name"])
    return None
