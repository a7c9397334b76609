"""Standard ``conditions[]`` handling and "write status only when it changed"."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from dynamiclora.api.conditions import ConditionType, Reason
from dynamiclora.api.policy import MigrationPolicyStatus
from dynamiclora.api.swarm import SwarmStatus
from dynamiclora.api.tier import LoRATierStatus
from dynamiclora.kube import Kube, Obj, now_rfc3339

# The API's status types: every status is validated against its kind's before it is written, so a key
# the CRD would prune, or a value it would refuse, fails in the operator's tests instead of in etcd.
STATUS_TYPES: dict[str, type[BaseModel]] = {
    "LoRATier": LoRATierStatus, "MigrationPolicy": MigrationPolicyStatus, "Swarm": SwarmStatus,
}


def typed_status(kind: str, status: Obj) -> Obj:
    """``status`` as the API's status type of ``kind`` writes it (validated; unset fields left out)."""
    model = STATUS_TYPES.get(kind)
    if model is None:
        return status
    return model.model_validate(status).model_dump(by_alias=True, exclude_unset=True, exclude_none=True, mode="json")


def set_condition(
    conditions: list[Obj], type_: ConditionType, status: bool | str, reason: Reason, message: str,
    generation: int | None,
) -> list[Obj]:
    """Return ``conditions`` with ``type_`` set; lastTransitionTime moves only when the status flips."""
    status_s = status if isinstance(status, str) else ("True" if status else "False")
    out = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed = old is None or old.get("status") != status_s
    cond: Obj = {
        "type": str(type_),
        "status": status_s,
        "reason": str(reason),
        "message": message[:32768],
        "lastTransitionTime": now_rfc3339() if changed or not old else old.get("lastTransitionTime", now_rfc3339()),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    return sorted(out, key=lambda c: str(c["type"]))


def get_condition(status: Obj | None, type_: ConditionType | str) -> Obj | None:
    """The condition of ``type_`` in a status, if any."""
    return next((c for c in (status or {}).get("conditions", []) if c.get("type") == type_), None)


def _strip_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_times(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, list):
        return [_strip_times(v) for v in value]
    return value


def status_changed(old: Obj | None, new: Obj, preserve: frozenset[str] = frozenset()) -> bool:
    """Whether ``new`` differs from ``old`` in anything but condition timestamps (dropped keys count)."""
    old = old or {}
    if any(k not in new and k not in preserve for k in old):
        return True
    return any(_strip_times(old.get(k)) != _strip_times(v) for k, v in new.items())


def wire_status(kind: str, status: Obj | BaseModel) -> Obj:
    """The status as written: a status model's fields that were set, or a dict validated as ``kind``'s."""
    if isinstance(status, BaseModel):
        return status.model_dump(by_alias=True, exclude_unset=True, exclude_none=True, mode="json")
    return typed_status(kind, status)


def write_status(kube: Kube, body: Obj, status: Obj | BaseModel, preserve: frozenset[str] = frozenset()) -> bool:
    """Merge-patch the status to ``status`` when it changed; returns whether a write happened.

    ``preserve`` names fields another controller owns: never written, never removed. A merge patch only
    removes a key that is sent as null, so other keys of the old status missing from the new one are nulled.
    """
    old = body.get("status") or {}
    new = {k: v for k, v in wire_status(str(body.get("kind", "")), status).items() if k not in preserve}
    if not status_changed(old, new, preserve):
        return False
    patch = dict(new)
    for key in old:
        if key not in new and key not in preserve:
            patch[key] = None
    meta = body["metadata"]
    kube.patch_status(body["kind"], meta["namespace"], meta["name"], patch)
    return True
