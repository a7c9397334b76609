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
    dest = (cache or cache_root()) / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if (dest / COMPLETE).is_file():
        return str(dest)
    from dynamiclora.storage.s3 import S3Backend

    backend = S3Backend(bucket, key, client)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    count = 0
    for blob in backend.list(""):
        rel = PurePosixPath(blob.key)
        if not rel.parts or blob.key.endswith("/"):
            continue
        if ".." in rel.parts:
            raise ValueError(f"base model {uri}: object key {blob.key!r} leaves its folder")
        target = tmp.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        backend.get_to_file(blob.key, target)
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
