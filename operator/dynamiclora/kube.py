"""The operator's view of the Kubernetes API: a small Protocol and its REST implementation.

Reconcile functions only talk to :class:`Kube`, so unit tests run them against an in-memory
implementation (``tests/unit/operator/fakekube.py``) and the operator against :class:`ApiKube`.
Children are written with server-side apply under one field manager, so the operator owns exactly the
fields it sets and never fights GitOps over user-owned ones.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from dynamiclora import FIELD_MANAGER, GROUP, VERSION

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """REST coordinates of one kind."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


# Everything the operator reads or writes; the Helm chart's ClusterRole is checked against this table.
RESOURCES: dict[str, Resource] = {
    r.kind: r
    for r in (
        Resource(f"{GROUP}/{VERSION}", "Swarm", "swarms"),
        Resource(f"{GROUP}/{VERSION}", "LoRATier", "loratiers"),
        Resource(f"{GROUP}/{VERSION}", "MigrationPolicy", "migrationpolicies"),
        Resource("apps/v1", "StatefulSet", "statefulsets"),
        Resource("batch/v1", "Job", "jobs"),
        Resource("v1", "Service", "services"),
        Resource("v1", "Pod", "pods"),
        Resource("v1", "Secret", "secrets"),
        Resource("v1", "ConfigMap", "configmaps"),
        Resource("v1", "Event", "events"),
        Resource("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),  # per-agent routes (placement)
        # Distributed training through Kubeflow Trainer, where its CRD is installed (read to find out).
        Resource("trainer.kubeflow.org/v1alpha1", "TrainJob", "trainjobs"),
        Resource("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", False),
    )
}


# The operator's leader-election Lease, in its own namespace (not a reconciled kind: RBAC is a separate Role).
LEASE = Resource("coordination.k8s.io/v1", "Lease", "leases")


class KubeError(RuntimeError):
    """A failed API call."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Kube(Protocol):
    """The Kubernetes operations reconcile functions use."""

    def apply(self, obj: Obj) -> Obj:
        """Server-side apply ``obj`` under the operator's field manager; returns the live object."""

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The object, or None when absent."""

    def read_through(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The object as the API server has it now, past any cache: what a pass reconciles."""

    def list(self, kind: str, namespace: str, labels: Mapping[str, str] | None = None) -> list[Obj]:
        """Objects of ``kind`` in ``namespace`` (all namespaces when empty) matching every label."""

    def create(self, obj: Obj) -> Obj | None:
        """Create ``obj``; None when an object of that name already exists (idempotent creation)."""

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete with background propagation; False when already gone."""

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        """Merge-patch the status subresource."""

    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        """Record a Kubernetes Event on ``involved`` (Normal or Warning)."""


def now_rfc3339() -> str:
    """The current UTC time as Kubernetes writes it."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def owner_reference(owner: Obj, controller: bool = True) -> Obj:
    """An ownerReference to ``owner`` so Kubernetes garbage-collects the child with it."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def event_body(involved: Obj, type_: str, reason: str, message: str, seq: int) -> Obj:
    """An ``events.k8s.io``-compatible core/v1 Event."""
    meta = involved["metadata"]
    ts = now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{seq:x}", "namespace": meta.get("namespace", "default")},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
    }


class ApiKube:
    """:class:`Kube` over the official client's authenticated ``ApiClient`` (kubeconfig or in-cluster)."""

    def __init__(self, kubeconfig: str | None = None) -> None:
        from kubernetes import client, config

        if kubeconfig:
            cfg = client.Configuration()
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            try:
                cfg = client.Configuration()
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                cfg = client.Configuration()
                config.load_kube_config(client_configuration=cfg)
        # Reconcilers run on up to 32 threads and a Swarm applies its tiers on 24 more: a pool of 10 (the
        # default) discards connections, and every new one costs a TLS handshake.
        cfg.connection_pool_maxsize = 64
        self.configuration = cfg
        self._api = client.ApiClient(cfg)
        self._seq = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        self._lock = threading.Lock()

    def connection_info(self) -> dict[str, Any]:
        """The same credentials as keyword arguments of ``kopf.ConnectionInfo`` (one source of auth)."""
        cfg = self.configuration
        auth = str(cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken") or "")
        scheme, _, token = auth.partition(" ") if " " in auth else ("Bearer", "", auth)
        return {
            "server": cfg.host,
            "ca_path": cfg.ssl_ca_cert,
            "insecure": not cfg.verify_ssl,
            "scheme": scheme if token else None,
            "token": token or None,
            "certificate_path": cfg.cert_file,
            "private_key_path": cfg.key_file,
        }

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        from kubernetes.client.exceptions import ApiException

        headers = {"Content-Type": content_type, "Accept": "application/json"}
        auth = self.connection_info()
        if auth["token"]:
            # Set explicitly: the generated client's auth_settings() looks for a key that its own kubeconfig
            # loader does not write (client 36), so relying on it sends anonymous requests.
            headers["Authorization"] = f"{auth['scheme']} {auth['token']}"
        try:
            resp = self._api.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                _preload_content=False,
                _request_timeout=30,
            )
        except ApiException as exc:
            try:
                message = json.loads(exc.body).get("message", exc.reason)
            except (TypeError, ValueError):
                message = str(exc.reason)
            raise KubeError(int(exc.status or 0), message) from exc
        data = resp[0].data if isinstance(resp, tuple) else resp.data
        return json.loads(data) if data else None

    def apply(self, obj: Obj) -> Obj:
        res = RESOURCES[obj["kind"]]
        meta = obj["metadata"]
        path = res.path(meta.get("namespace"), meta["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        return dict(self._call("PATCH", path, obj, query, "application/apply-patch+yaml"))

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return dict(self._call("GET", RESOURCES[kind].path(namespace, name)))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def read_through(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.get(kind, namespace, name)  # nothing cached here

    LIST_PAGE = 500

    def list(self, kind: str, namespace: str, labels: Mapping[str, str] | None = None) -> list[Obj]:
        """Read page by page, without ``managedFields``: a Swarm of 10,000 agents lists 20,000 tiers, and one
        response decoded whole, bookkeeping the operator never reads included, made up most of its memory."""
        res, items, cont = RESOURCES[kind], [], ""
        base = [("labelSelector", ",".join(f"{k}={v}" for k, v in sorted(labels.items())))] if labels else []
        while True:
            query = [*base, ("limit", str(self.LIST_PAGE))] + ([("continue", cont)] if cont else [])
            data = self._call("GET", res.path(namespace), query=query)
            for item in data.get("items", []):  # list items omit apiVersion/kind
                item.get("metadata", {}).pop("managedFields", None)
                item.setdefault("apiVersion", res.api_version)
                item.setdefault("kind", kind)
                items.append(item)
            cont = (data.get("metadata") or {}).get("continue") or ""
            if not cont:
                return items

    def create(self, obj: Obj) -> Obj | None:
        meta = obj["metadata"]
        try:
            return dict(self._call("POST", RESOURCES[obj["kind"]].path(meta.get("namespace")), obj))
        except KubeError as exc:
            if exc.status == 409:
                return None
            raise

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            self._call("DELETE", RESOURCES[kind].path(namespace, name), body)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def get_lease(self, namespace: str, name: str) -> Obj | None:
        try:
            return dict(self._call("GET", LEASE.path(namespace, name)))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def write_lease(self, lease: Obj) -> Obj | None:
        """Create the Lease, or replace it at the resourceVersion it carries; None when another writer won."""
        meta = lease["metadata"]
        method, path = ("PUT", LEASE.path(meta["namespace"], meta["name"])) if meta.get("resourceVersion") \
            else ("POST", LEASE.path(meta["namespace"]))  # fmt: skip
        try:
            return dict(self._call(method, path, lease))
        except KubeError as exc:
            if exc.status == 409:
                return None
            raise

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        path = RESOURCES[kind].path(namespace, name) + "/status"
        return dict(self._call("PATCH", path, {"status": status}, content_type="application/merge-patch+json"))

    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        with self._lock:
            self._seq += 1
            seq = self._seq
        body = event_body(involved, type_, reason, message, seq)
        # Events are best effort: losing one must never fail a reconcile.
        with contextlib.suppress(KubeError):
            self._call("POST", RESOURCES["Event"].path(body["metadata"]["namespace"]), body)


class CachedGets:
    """A :class:`Kube` whose ``get`` of some kinds is served from a short-lived cache.

    Thousands of per-agent tiers each read their Swarm on every resync; the Swarm changes rarely, so a
    few seconds of staleness cost nothing and save one API call per tier per pass. Secrets likewise: each
    Swarm pass reads its generated keys, the operator's vLLM key and the Secrets its resources name (a
    watch would need list/watch on every Secret of the cluster, which the operator does not ask for), so
    someone else's change to a Secret is seen within its TTL (a minute: a rotated key is picked up
    within a minute). Writes pass through and drop the cached copy of what they wrote, so what the
    operator creates is seen at once.
    """

    DEFAULT_TTLS: Mapping[str, float] = {"Swarm": 5.0, "Secret": 60.0}
    # Past this many entries, expired ones (objects deleted meanwhile, mostly) are dropped.
    PRUNE_AT = 4096

    def __init__(self, inner: Kube, ttls: Mapping[str, float] | None = None) -> None:
        self.inner = inner
        self.ttls = dict(self.DEFAULT_TTLS if ttls is None else ttls)
        self._cache: dict[tuple[str, str, str], tuple[float, Obj | None]] = {}
        self._flights: dict[tuple[str, str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        ttl = self.ttls.get(kind, 0.0)
        if ttl <= 0:
            return self.inner.get(kind, namespace, name)
        key = (kind, namespace, name)
        with self._lock:
            hit = self._cache.get(key)
            if hit and time.monotonic() - hit[0] < ttl:
                return hit[1]
            flight = self._flights.setdefault(key, threading.Lock())
        # Single flight: when the entry expires, one thread fetches and the others wait for its result
        # instead of all fetching the same (for a 1,000-agent Swarm, large) object at once.
        with flight:
            with self._lock:
                hit = self._cache.get(key)
                if hit and time.monotonic() - hit[0] < ttl:
                    return hit[1]
            obj = self.inner.get(kind, namespace, name)
            with self._lock:
                now = time.monotonic()
                self._cache[key] = (now, obj)
                if len(self._cache) > self.PRUNE_AT:
                    self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self.ttls[k[0]]}
                    self._flights = {k: f for k, f in self._flights.items() if k in self._cache or f.locked()}
            return obj

    def read_through(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The object as the API server has it now (the cache is refreshed with it): what a pass reconciles
        must never be a cached copy, or a spec changed within the TTL would be reconciled back to the old one."""
        obj = self.inner.get(kind, namespace, name)
        with self._lock:
            if self.ttls.get(kind, 0.0) > 0:
                self._cache[(kind, namespace, name)] = (time.monotonic(), obj)
        return obj

    def _forget(self, obj: Obj) -> None:
        meta = obj.get("metadata", {})
        with self._lock:
            self._cache.pop((obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", "")), None)

    def apply(self, obj: Obj) -> Obj:
        self._forget(obj)
        return self.inner.apply(obj)

    def list(self, kind: str, namespace: str, labels: Mapping[str, str] | None = None) -> list[Obj]:
        return self.inner.list(kind, namespace, labels)

    def create(self, obj: Obj) -> Obj | None:
        self._forget(obj)
        return self.inner.create(obj)

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        self._forget({"kind": kind, "metadata": {"namespace": namespace, "name": name}})
        return self.inner.delete(kind, namespace, name)

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        return self.inner.patch_status(kind, namespace, name, status)

    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        self.inner.event(involved, type_, reason, message)
