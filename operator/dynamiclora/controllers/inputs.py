"""Inputs a training Job reads besides the interaction records, checked before the Job is created.

A missing input fails every attempt the same way, so it is reported as a condition and the tier waits
for it instead of spending its failed attempts.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dynamiclora.api.common import Storage
from dynamiclora.api.tier import LoRATierSpec
from dynamiclora.builders.jobs import storage_path
from dynamiclora.settings import OperatorSettings

log = logging.getLogger(__name__)


def missing_inputs(spec: LoRATierSpec, storage: Storage, settings: OperatorSettings) -> list[str]:
    """``"<field> <path>"`` of every referenced input that does not exist (empty when all are there)."""
    regression = spec.quality_gate.regression_set
    if not regression:
        return []
    path = storage_path(storage, regression, settings)
    return [] if input_exists(path, settings) else [f"regressionSet {path}"]


def input_exists(path: str, settings: OperatorSettings) -> bool:
    """Whether ``path`` (a file or folder) exists; True when the operator cannot tell."""
    if path.startswith("s3://"):
        return _s3_exists(path)
    local = Path(path.removeprefix("file://"))
    root = Path(settings.pvc_mount_root)
    # The operator mounts the storage PVCs under the same root as the Jobs; any other absolute path is
    # a pod path (the image's own files, another volume) that only the Job can see.
    if not local.is_relative_to(root):
        return True
    return local.exists()


def _s3_exists(uri: str) -> bool:
    """An object ``s3://bucket/key`` exists, or a ``s3://bucket/prefix/`` holds at least one.

    Uses the operator's own S3 credentials; when they cannot answer (none, no access, endpoint down) the
    Job, which may have other credentials, is left to decide.
    """
    from dynamiclora.serving.served_s3 import s3_backend

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        blobs = s3_backend(f"s3://{bucket}").list(key)
    except Exception as exc:
        log.debug("cannot check %s: %s", uri, exc)
        return True
    # The same reading as the Job's (training/records.iter_sources): a key is one object, a prefix
    # ending in "/" every .jsonl object below it.
    if not key or key.endswith("/"):
        return any(b.key.endswith(".jsonl") for b in blobs)
    return any(b.key == key for b in blobs)
