"""An in-memory :class:`dynamiclora.kube.Kube` for unit tests of the reconcile functions.

It implements the Protocol's semantics that reconcilers rely on (apply = merge by name, create = 409 ->
None, list by labels, status patches, events) and nothing of the API server's validation: tests that need
the real thing run in tests/integration against the local control plane.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

from dynamiclora_dev.testing.merge_patch import merge_patch

Obj = dict[str, Any]
_uid = itertools.count(1)


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.events: list[tuple[str, str, str, str]] = []
        self.calls: list[tuple[str, str, str]] = []

    def add(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{next(_uid)}")
        meta.setdefault("generation", 1)
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj
        return obj

    def apply(self, obj: Obj) -> Obj:
        self.calls.append(("apply", obj["kind"], obj["metadata"]["name"]))
        key = (obj["kind"], obj["metadata"].get("namespace", "default"), obj["metadata"]["name"])
        live = self.objects.get(key)
        if live is None:
            return self.add(obj)
        status = live.get("status")
        merged = copy.deepcopy(obj)
        merged["metadata"] = {**live["metadata"], **obj["metadata"]}
        if status is not None:
            merged["status"] = status
        self.objects[key] = merged
        return merged

    def read_through(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.get(kind, namespace, name)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def list(self, kind: str, namespace: str, labels: Mapping[str, str] | None = None) -> list[Obj]:
        out = []
        for (k, ns, _), obj in sorted(self.objects.items()):
            have = obj["metadata"].get("labels", {})
            if k == kind and ns == namespace and all(have.get(a) == b for a, b in (labels or {}).items()):
                out.append(copy.deepcopy(obj))
        return out

    def create(self, obj: Obj) -> Obj | None:
        self.calls.append(("create", obj["kind"], obj["metadata"]["name"]))
        key = (obj["kind"], obj["metadata"].get("namespace", "default"), obj["metadata"]["name"])
        if key in self.objects:
            return None
        return self.add(obj)

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.calls.append(("delete", kind, name))
        return self.objects.pop((kind, namespace, name), None) is not None

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        self.calls.append(("status", kind, name))
        obj = self.objects[(kind, namespace, name)]
        obj["status"] = merge_patch(obj.get("status") or {}, copy.deepcopy(status))
        return copy.deepcopy(obj)

    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        self.events.append((involved["metadata"]["name"], type_, reason, message))
