"""Every leaf field of the custom resources' specs, enumerated from the pydantic models.

Shared by the "no decorative field" test (each leaf must change what the operator produces) and the
description test (each leaf is documented in the generated CRD). Walking ``model_fields`` rather than a
hand-written list means a field added to the API is checked without anyone remembering to list it.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from dynamiclora.api.policy import MigrationPolicySpec
from dynamiclora.api.swarm import SwarmSpec
from dynamiclora.api.tier import LoRATierSpec

SPECS: dict[str, type[BaseModel]] = {
    "Swarm": SwarmSpec, "LoRATier": LoRATierSpec, "MigrationPolicy": MigrationPolicySpec,
}


@dataclass(frozen=True)
class Leaf:
    """One leaf field; ``path`` is the wire path, lists of objects written ``[]`` (checked at index 0)."""

    kind: str
    path: str  # e.g. spec.contextTier.plasticity.freeDecay, spec.agents[].pinnedVersions.context
    keys: tuple[str, ...]  # wire keys after "spec"; "[]" stands for list index 0
    attrs: tuple[str, ...]  # python attribute names, "[]" likewise
    info: FieldInfo
    annotation: Any  # the field's type with ``| None`` removed


def _strip_none(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _model(tp: Any) -> type[BaseModel] | None:
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _walk(kind: str, model: type[BaseModel], keys: tuple[str, ...], attrs: tuple[str, ...]) -> list[Leaf]:
    out: list[Leaf] = []
    for attr, info in model.model_fields.items():
        key = info.alias or attr
        tp = _strip_none(info.annotation)
        if sub := _model(tp):
            out += _walk(kind, sub, (*keys, key), (*attrs, attr))
        elif typing.get_origin(tp) is list and (sub := _model(typing.get_args(tp)[0])):
            out += _walk(kind, sub, (*keys, key, "[]"), (*attrs, attr, "[]"))
        else:
            path = ".".join(("spec", *keys, key)).replace(".[]", "[]")
            out.append(Leaf(kind, path, (*keys, key), (*attrs, attr), info, tp))
    return out


def spec_leaves(kind: str) -> list[Leaf]:
    """The leaf fields of ``kind``'s spec, nested models (optional ones and lists of them) included."""
    return _walk(kind, SPECS[kind], (), ())


def all_leaves() -> list[Leaf]:
    return [leaf for kind in SPECS for leaf in spec_leaves(kind)]
