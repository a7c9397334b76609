"""Who may change what a swarm's vLLM pods serve: the guard middleware's ConfigMap and the two key Secrets.

vLLM runs with ``--middleware dynamiclora_guard.AdminGuard`` (``serving/guard.py``, mounted from a ConfigMap
because the vLLM image does not have DynamicLoRA): the operator's key may manage adapters, a client key
may only run inference. The operator's key is generated per Swarm into a Secret only the operator and the
pods read; the client key is the Secret the spec names (``inference.apiKeySecretRef``) or, without one, a
generated Secret clients read. Generated Secrets are created once and never rewritten, and go with the Swarm.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.names import (
    LABEL_SWARM,
    base_labels,
    client_key_secret,
    guard_config_map,
    operator_key_secret,
)
from dynamiclora.kube import Obj, owner_reference
from dynamiclora.serving.guard import ADMIN_KEY_ENV, CLIENT_KEY_ENV
from dynamiclora.serving.launcher import GUARD_MIDDLEWARE, GUARD_MODULE, guard_source

GUARD_MOUNT = "/opt/dynamiclora/guard"
OPERATOR_KEY = "operator-key"  # the data key of the operator's Secret
CLIENT_KEY = "api-key"  # the data key of a generated client Secret
GUARD_ANNOTATION = "dynamiclora.io/guard"  # the guard's digest: pods restart when the guard changes


def _meta(body: Obj, name: str) -> Obj:
    swarm = body["metadata"]["name"]
    return {"name": name, "namespace": body["metadata"]["namespace"],
            "labels": {**base_labels("inference"), LABEL_SWARM: swarm}, "ownerReferences": [owner_reference(body)]}


def build_guard_config_map(body: Obj) -> Obj:
    """The guard module, as the vLLM containers import it."""
    meta = _meta(body, guard_config_map(body["metadata"]["name"]))
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {f"{GUARD_MODULE}.py": guard_source()}}


def guard_digest() -> str:
    return hashlib.sha256(guard_source().encode()).hexdigest()[:16]


def build_key_secrets(body: Obj, sw: Swarm) -> list[Obj]:
    """Secrets to create if absent: the operator's key, and the client key when the spec names none.

    Each call draws fresh keys: only the first creation counts (an existing Secret is never rewritten).
    """
    swarm = body["metadata"]["name"]
    wanted = [(operator_key_secret(swarm), OPERATOR_KEY)]
    if sw.spec.inference.api_key_secret_ref is None:
        wanted.append((client_key_secret(swarm), CLIENT_KEY))
    return [{"apiVersion": "v1", "kind": "Secret", "metadata": _meta(body, name), "type": "Opaque",
             "data": {field: base64.b64encode(secrets.token_urlsafe(32).encode()).decode()}}
            for name, field in wanted]  # fmt: skip


def client_key_ref(sw: Swarm, swarm: str) -> tuple[str, str]:
    """(Secret, key) of the client key of the swarm's pods."""
    ref = sw.spec.inference.api_key_secret_ref
    return (ref.name, ref.key) if ref else (client_key_secret(swarm), CLIENT_KEY)


def guard_env(sw: Swarm, swarm: str) -> list[Obj]:
    """The vLLM container's environment for the guard: both keys from their Secrets, and its module path."""
    client, client_field = client_key_ref(sw, swarm)
    operator = {"name": operator_key_secret(swarm), "key": OPERATOR_KEY}
    return [
        {"name": ADMIN_KEY_ENV, "valueFrom": {"secretKeyRef": operator}},
        {"name": CLIENT_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": client, "key": client_field}}},
        {"name": "PYTHONPATH", "value": GUARD_MOUNT},
    ]


def guard_args() -> list[str]:
    return ["--middleware", GUARD_MIDDLEWARE]


def guard_volume(swarm: str) -> tuple[Obj, Obj]:
    """The ConfigMap volume and its read-only mount."""
    return ({"name": "guard", "configMap": {"name": guard_config_map(swarm)}},
            {"name": "guard", "mountPath": GUARD_MOUNT, "readOnly": True})
