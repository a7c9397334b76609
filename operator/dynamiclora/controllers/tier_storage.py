"""A tier's storage as the operator reaches it: with the custom resource's S3 settings, not its own.

An S3 storage names its endpoint, region and (optionally) a Secret with ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``; the Jobs get exactly these (builders/jobs.py), so the operator uses them too
when it observes versions and counts records. Without a Secret boto3's default chain applies (the
operator's environment or workload identity), as the CRD documents.

Storage the operator cannot read is reported on the tier (a condition and one event per distinct
problem) instead of failing the reconcile: wrong credentials do not go away by retrying, and the user
needs to see why the tier neither trains nor observes its versions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dynamiclora.api.common import S3Storage, Storage
from dynamiclora.api.conditions import ConditionType, EventType, Reason
from dynamiclora.api.tier import TierPhase
from dynamiclora.controllers.common import Event, generation
from dynamiclora.controllers.conditions import (
    get_condition,
    set_condition,
)
from dynamiclora.kube import Kube, KubeError, Obj
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.base import CheckpointStore, StoreError

T = TypeVar("T")
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
SECRET_TTL_SECONDS = 30.0  # a rotated key is picked up this late; saves one Secret GET per tier per resync
_MAX_CLIENTS = 64
_ACCESS_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}


class StorageUnavailable(Exception):
    """The tier's storage cannot be reached as configured; the message says what to fix."""


@dataclass(frozen=True)
class StoreAccess:
    """A checkpoint store as one custom resource reaches it: its URI and that resource's S3 client."""

    uri: str
    client: Any = field(default=None, compare=False, repr=False)  # None: a PVC, or boto3's default chain

    def open(self) -> CheckpointStore:
        from dynamiclora.storage.uri import open_store

        return open_store(self.uri, s3_client=self.client)


def store_access(kube: Kube, ns: str, storage: Storage, settings: OperatorSettings) -> StoreAccess:
    """The store of ``storage`` with its own identity (see :func:`s3_client_for`)."""
    from dynamiclora.builders.jobs import store_uri

    return StoreAccess(store_uri(storage, settings), s3_client_for(kube, ns, storage))


_lock = threading.Lock()
_secrets: dict[tuple[str, str], tuple[float, tuple[str, str]]] = {}
_clients: OrderedDict[tuple[str | None, str, str | None, str], Any] = OrderedDict()


def s3_client_for(kube: Kube, ns: str, storage: Storage) -> Any | None:
    """The boto3 client of an S3 storage (None for a PVC); clients are shared per configuration.

    Raises:
        StorageUnavailable: the credentials Secret is missing, unreadable or lacks a key.
    """
    if storage.s3 is None:
        return None
    s3 = storage.s3
    keys = _credentials(kube, ns, s3) if s3.credentials_secret_ref else None
    # Keyed by a digest of the secret, not the secret itself: a rotated key gets a new client.
    cache_key = (s3.endpoint, s3.region, keys[0] if keys else None,
                 hashlib.sha256(keys[1].encode()).hexdigest() if keys else "")  # fmt: skip
    with _lock:
        client = _clients.get(cache_key)
        if client is not None:
            _clients.move_to_end(cache_key)
            return client
    from dynamiclora.storage.s3 import build_s3_client

    client = build_s3_client(s3.endpoint, s3.region, *(keys or (None, None)))
    with _lock:
        _clients[cache_key] = client
        while len(_clients) > _MAX_CLIENTS:
            _clients.popitem(last=False)
    return client


def _credentials(kube: Kube, ns: str, s3: S3Storage) -> tuple[str, str]:
    assert s3.credentials_secret_ref is not None
    name = s3.credentials_secret_ref.name
    with _lock:
        hit = _secrets.get((ns, name))
    if hit and time.monotonic() - hit[0] < SECRET_TTL_SECONDS:
        return hit[1]
    keys = _read_secret(kube, ns, name)
    with _lock:
        _secrets[(ns, name)] = (time.monotonic(), keys)
    return keys


def _read_secret(kube: Kube, ns: str, name: str) -> tuple[str, str]:
    where = f"Secret {ns}/{name} (spec.storage.s3.credentialsSecretRef)"
    try:
        secret = kube.get("Secret", ns, name)
    except KubeError as e:
        raise StorageUnavailable(f"cannot read {where}: {e}") from e
    if secret is None:
        raise StorageUnavailable(f"{where} does not exist")
    data = secret.get("data") or {}
    missing = [k for k in CREDENTIAL_KEYS if not data.get(k)]
    if missing:
        raise StorageUnavailable(f"{where} has no {' or '.join(missing)}")
    try:
        key_id, secret_key = (base64.b64decode(data[k], validate=True).decode().strip() for k in CREDENTIAL_KEYS)
    except (binascii.Error, UnicodeDecodeError) as e:
        raise StorageUnavailable(f"{where}: {CREDENTIAL_KEYS} must be base64 UTF-8 text ({e})") from e
    return key_id, secret_key


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the storage cannot be read (rather than a bug or an API server failure)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, StorageUnavailable | StoreError | ClientError | BotoCoreError)


def explain(exc: BaseException) -> str:
    """``exc``'s message, with a hint when S3 refused the credentials."""
    codes = {_code(e) for e in (exc, exc.__cause__) if e is not None}
    hint = " (check spec.storage.s3.credentialsSecretRef and region)" if codes & _ACCESS_CODES else ""
    return f"{exc}{hint}"


def _code(err: BaseException) -> str:
    resp = getattr(err, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


def records_unavailable(conditions: list[Obj], exc: Exception, events: list[Event], gen: int | None) -> list[Obj]:
    """The Training condition (and one event per distinct problem) when the records cannot be counted."""
    msg = f"cannot count the interaction records: {explain(exc)}"
    return _report(conditions, ConditionType.TRAINING, Reason.RECORDS_UNAVAILABLE, msg, events, gen)


def storage_unavailable(body: Obj, exc: BaseException) -> tuple[Obj, list[Event]]:
    """The status of a pass that could not read the tier's storage: the last one, marked not Ready."""
    status: Obj = dict(body.get("status") or {})
    events: list[Event] = []
    msg = f"the {body.get('kind', 'object')}'s storage cannot be read: {explain(exc)}"
    gen = generation(body)
    status["conditions"] = _report(list(status.get("conditions", [])), ConditionType.READY,
                                   Reason.STORAGE_UNAVAILABLE, msg,
                                   events, gen)  # fmt: skip
    status["observedGeneration"] = gen
    status.setdefault("phase", TierPhase.PENDING)
    return status, events


def guard_storage(
    reconcile: Callable[[], T], body: Obj, outcome: Callable[[Obj, list[Event]], T]
) -> T:
    """Run ``reconcile``; storage it cannot read becomes ``outcome(status, events)`` of the last status marked
    not Ready (:func:`storage_unavailable`) instead of a failed reconcile. Other errors propagate."""
    try:
        return reconcile()
    except Exception as e:
        if not is_storage_error(e):
            raise
        return outcome(*storage_unavailable(body, e))


def _report(
    conditions: list[Obj], type_: ConditionType, reason: Reason, msg: str, events: list[Event], gen: int | None
) -> list[Obj]:
    old = get_condition({"conditions": conditions}, type_) or {}
    if (old.get("reason"), old.get("message")) != (reason, msg):  # one event, not one per resync
        events.append(Event(EventType.WARNING, reason, msg))
    return set_condition(conditions, type_, False, reason, msg, gen)
