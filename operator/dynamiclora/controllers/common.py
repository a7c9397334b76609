"""Helpers shared by the reconcilers: parsing with clear errors, events with conditions."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from dynamiclora.api.validate import validate_document
from dynamiclora.kube import Obj

M = TypeVar("M", bound=BaseModel)


class InvalidSpec(Exception):
    """The object cannot be reconciled until the user changes it (a PermanentError for kopf)."""


class WaitFor(Exception):
    """Something the object depends on is not there yet; retry after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 10.0) -> None:
        super().__init__(message)
        self.delay = delay


def parse(model: type[M], body: Obj) -> M:
    """Validate ``body`` with the API model; :class:`InvalidSpec` lists every problem with its field."""
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
