"""Base model weights named by an ``s3://`` URI (``spec.baseModel.s3Uri``), fetched once per pod.

The vLLM pods fetch such weights with an init container; the Job entrypoints (``train``, ``consolidate``,
``compose``) are given the URI itself and fetch it here, with the store's S3 client (the Job's ``AWS_*``
environment, as for checkpoints), into a local folder named after the URI: a complete copy appears by one
rename, so ranks of a distributed run and a retried Job never read a half-written one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

# The fields of each Job entrypoint's config that name a base model directory (ConsolidateConfig.base_model
# is the name recorded in adapters, not weights).
MODEL_FIELDS = {"TrainConfig": ("base_model",), "ConsolidateConfig": ("model_dir", "gate_base_model"),
                "ComposeConfig": ("model_dir",)}
COMPLETE = ".complete"
C = TypeVar("C")


def cache_root() -> Path:
    return Path(os.environ.get("DYNAMICLORA_MODEL_CACHE") or Path(tempfile.gettempdir()) / "dynamiclora-models")


def fetch_base(uri: str, client: Any = None, cache: Path | None = None) -> str:
    """The local folder holding ``uri``'s objects (downloaded unless already there); other values as given.

    Raises:
        ValueError: the URI names no objects, or an object key would leave the folder.
    """
    if not uri.startswith("s3://"):
        return uri
    bucket, _, key = uri[len("s3://") :].partition("/")
    prefix = key.rstrip("/") + "/"
    dest = (cache or cache_root()) / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if (dest / COMPLETE).is_file():
        return str(dest)
    if client is None:
        from dynamiclora.storage.s3 import s3_client_from_env

        client = s3_client_from_env()
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = PurePosixPath(obj["Key"][len(prefix) :])
            if not rel.parts or obj["Key"].endswith("/"):
                continue
            if ".." in rel.parts:
                raise ValueError(f"base model {uri}: object key {obj['Key']!r} leaves its folder")
            target = tmp.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target))
            count += 1
    if count == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"base model {uri}: no objects under it")
    (tmp / COMPLETE).write_text(f"{count}\n")
    try:
        os.replace(tmp, dest)
    except OSError:  # another process of this pod completed it first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def with_local_models(cfg: C) -> C:
    """``cfg`` (a Job entrypoint's config) with every ``s3://`` base model fetched and named locally."""
    fields = MODEL_FIELDS.get(type(cfg).__name__, ())
    found = {f: v for f in fields if isinstance(v := getattr(cfg, f, None), str) and v.startswith("s3://")}
    if not found:
        return cfg
    return dataclasses.replace(cfg, **{f: fetch_base(v) for f, v in found.items()})  # type: ignore[type-var]
