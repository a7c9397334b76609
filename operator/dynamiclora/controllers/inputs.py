"""Inputs a training Job reads besides the interaction records, checked before the Job is created.

A missing input fails every attempt the same way, so it is reported as a condition and the tier waits
for it instead of spending its failed attempts.
"""

from __future__ import annotations

import logging
from typing import Any

from dynamiclora.api.common import Storage
from dynamiclora.api.tier import LoRATierSpec
from dynamiclora.builders.jobs import storage_path
from dynamiclora.controllers.common import InvalidSpec
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.schemes import record_source

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
    missing = []
    for field, location in (("qualityGate.regressionSet", spec.quality_gate.regression_set),
                            ("training.anchorSet", spec.training.anchor_set)):
        if not location:
            continue
        try:
            path = storage_path(storage, location, settings)
        except ValueError as err:
            raise InvalidSpec(f"spec.{field}: {err}") from None
        if not input_exists(path, settings, s3_client):
            missing.append(f"{field.rsplit('.', 1)[-1]} {path}")
    return missing


def input_exists(path: str, settings: OperatorSettings, s3_client: Any = None) -> bool:
    """Whether ``path`` (a records file or folder in a storage) holds records; True when that cannot be told.

    The operator mounts the storage PVCs under the same root as the Jobs, and reads a bucket with the
    storage's own identity (``s3_client``), so it sees what the Job will. When the storage cannot answer
    (no access, endpoint down) the Job is left to decide and to say why.
    """
    try:
        return bool(record_source(path, s3_client).objects())
    except Exception as exc:  # botocore raises its own types; any failure to tell is not a missing input
        log.debug("cannot check %s: %s", path, exc)
        return True
