"""``spec.baseModel.s3Uri`` for the Jobs: the entrypoints take an ``s3://`` base model and fetch it themselves
(the vLLM pods' init container fetches it for them). Real S3 API: moto's server on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_training_train import NS, TIER, train_args
from trainhelpers import write_records

from dynamiclora.cli import main
from dynamiclora.storage import open_store
from dynamiclora.training.base_model import COMPLETE, fetch_base
from dynamiclora.training.model import load_base

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _upload(client: Any, bucket: str, folder: Path, prefix: str) -> int:
    files = [p for p in folder.rglob("*") if p.is_file()]
    for p in files:
        client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(folder).as_posix()}")
    return len(files)


def test_a_train_job_given_an_s3_base_model_fetches_it_once_and_trains(
    tiny_model_dir: Path, s3_client: Any, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    n = _upload(s3_client, s3_bucket, tiny_model_dir, "models/tiny")
    uri = f"s3://{s3_bucket}/models/tiny"
    monkeypatch.setenv("DYNAMICLORA_MODEL_CACHE", str(tmp_path / "cache"))
    store_uri = f"file://{tmp_path}/store"
    data = write_records(tmp_path / "records.jsonl", n=8)
    args = train_args(tiny_model_dir, data, store_uri, tmp_path / "work", "--result-file", str(tmp_path / "r.json"))
    args[args.index("--base-model") + 1] = uri
    code = main(args)  # the console script's entry point, in-process
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["version"] == 1
    assert open_store(store_uri).list_versions(NS, TIER) == [1]
    (cached,) = (tmp_path / "cache").iterdir()
    assert (cached / COMPLETE).read_text().strip() == str(n)
    # Fetched once: with the bucket emptied, the same URI is served from the copy, which loads.
    for p in (tmp_path / "cache").rglob("*"):
        if p.is_file() and p.name != COMPLETE:
            s3_client.delete_object(Bucket=s3_bucket, Key=f"models/tiny/{p.relative_to(cached).as_posix()}")
    assert fetch_base(uri) == str(cached)
    model, tokenizer = load_base(str(cached))
    assert tokenizer.pad_token_id is not None and model.config.vocab_size > 0


def test_an_s3_base_model_that_is_not_there_is_a_clear_error(
    s3_client: Any, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("DYNAMICLORA_MODEL_CACHE", str(tmp_path / "cache"))
    data = write_records(tmp_path / "records.jsonl", n=4)
    args = train_args(tmp_path / "unused", data, f"file://{tmp_path}/store", tmp_path / "work")
    args[args.index("--base-model") + 1] = f"s3://{s3_bucket}/models/none"
    assert main(args) == 2
    assert f"base model s3://{s3_bucket}/models/none: no objects under it" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True
