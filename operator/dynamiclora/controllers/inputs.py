"""Inputs a training Job reads besides the interaction records, checked before the Job is created.

A missing input fails every attempt the same way, so it is reported as a condition and the tier waits
for it instead of spending its failed attempts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dynamiclora.api.common import Storage
from dynamiclora.api.tier import LoRATierSpec
from dynamiclora.builders.jobs import storage_path
from dynamiclora.controllers.common import InvalidSpec
from dynamiclora.settings import OperatorSettings

log = logging.getLogger(__name__)


def missing_inputs(
    spec: LoRATierSpec, storage: Storage, settings: OperatorSettings, s3_client: Any = None
) -> list[str]:
    """``"<field> <path>"`` of every referenced input that does not exist (empty when all are there).

    ``s3_client`` is the storage's own S3 identity, the one the Job reads the input with.

    Raises:
        InvalidSpec: an input outside the storage (a tier without storage of its own is checked here
            against the Swarm's; the API server and the spec models check the rest).
    """
    regression = spec.quality_gate.regression_set
    if not regression:
        return []
    try:
        path = storage_path(storage, regression, settings)
    except ValueError as err:
        raise InvalidSpec(f"spec.qualityGate.regressionSet: {err}") from None
    return [] if input_exists(path, settings, s3_client) else [f"regressionSet {path}"]


def input_exists(path: str, settings: OperatorSettings, s3_client: Any = None) -> bool:
    """Whether ``path`` (a file or folder in a storage) exists; True when the operator cannot tell.

    The operator mounts the storage PVCs under the same root as the Jobs, so a PVC path is its to check.
    """
    if path.startswith("s3://"):
        return _s3_exists(path, s3_client)
    return Path(path.removeprefix("file://")).exists()


def _s3_exists(uri: str, client: Any) -> bool:
    """An object ``s3://bucket/key`` exists, or a ``s3://bucket/prefix/`` holds at least one.

    Asked with the storage's identity (``client``); when S3 cannot answer (no access, endpoint down) the
    Job is left to decide and to say why.
    """
    from dynamiclora.serving.served_s3 import s3_backend

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        blobs = s3_backend(f"s3://{bucket}", client).list(key)
    except Exception as exc:
        log.debug("cannot check %s: %s", uri, exc)
        return True
    # The same reading as the Job's (training/records.iter_sources): a key is one object, a prefix
    # ending in "/" every .jsonl object below it.
    if not key or key.endswith("/"):
        return any(b.key.endswith(".jsonl") for b in blobs)
    return any(b.key == key for b in blobs)
