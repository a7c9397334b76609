"""`dynamiclora train` on the tiny Llama: learning, frozen tiers, kill-and-resume, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainhelpers import result_of, run_cli, write_records

from dynamiclora.cli import main
from dynamiclora.memory import LowRankDelta, save_adapter
from dynamiclora.storage import open_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS, TIER = "team", "alice-context"


def publish_random_adapter(store_uri: str, tier: str, tmp: Path, width: int = 128, seed: int = 1) -> str:
    """A random rank-4 tier on q_proj/v_proj of both layers, published to the store; returns its ref."""
    gen = torch.Generator().manual_seed(seed)
    delta = {f"model.layers.{i}.self_attn.{m}": LowRankDelta(torch.randn(width, 4, generator=gen) * 0.02,
                                                            torch.randn(4, width, generator=gen) * 0.02)
             for i in range(2) for m in ("q_proj", "v_proj")}
    directory = save_adapter(delta, tmp / f"adapter-{tier}", target_modules=["q_proj", "v_proj"])
    files = {p.name: p for p in directory.iterdir()}
    ref = open_store(store_uri).publish(NS, tier, files)
    return f"{store_uri}/{NS}/{tier}/v{ref.version:06d}"


def train_args(model: Path, data: Path, store_uri: str, work: Path, *extra: str, rank: int = 4) -> list[str]:
    return ["train", "--base-model", str(model), "--data", str(data), "--output-store", store_uri,
            "--namespace", NS, "--tier", TIER, "--work-dir", str(work), "--steps", "40", "--batch-size", "4",
            "--lr", "0.01", "--rank", str(rank), "--checkpoint-every", "5", "--seed", "3", "--threads", "1", *extra]


def adapter_tensors(store_uri: str, version: int, dest: Path) -> dict[str, torch.Tensor]:
    open_store(store_uri).download(NS, TIER, version, dest)
    return load_file(str(dest / "adapter_model.safetensors"))


def test_train_learns_and_resume_after_sigkill_is_exact(
    tiny_model_dir: Path, records_file: Path, tmp_path: Path
) -> None:
    store_uri = f"file://{tmp_path}/store"
    frozen = publish_random_adapter(store_uri, "alice-agent", tmp_path)
    args = ("--frozen", frozen)

    # 1. Uninterrupted run.
    full = run_cli(*train_args(tiny_model_dir, records_file, store_uri, tmp_path / "w1", *args))
    assert full.returncode == 0, full.stderr
    res = result_of(full)
    # Records r4, r10 and r13 fall in the quality gate's held-out slice (10% by hash): never trained on.
    assert res["version"] == 1 and res["records"] == 13 and res["heldOut"] == 3 and res["steps"] == 40
    gate = res["gate"]
    assert isinstance(gate, dict) and gate["accepted"] is True and gate["reason"] == "gate disabled"
    assert gate["maxRegression"] is None and gate["heldOut"]["records"] == 3
    assert "step 40/40 loss" in full.stdout and "tokens/s" in full.stdout
    # A randomly initialised tiny model has small logits, so even a perfect fit cannot reach 0 loss;
    # a drop of over one nat on the training records is far outside noise (initial ~ ln(vocab) = 6.3).
    assert float(res["finalLoss"]) < float(res["initialLoss"]) - 1.0  # type: ignore[arg-type]
    stats = json.loads(open_store(store_uri).read_file(NS, TIER, 1, "stats.json"))
    assert len(stats["lossCurve"]) == 40 and stats["frozenUnchanged"] is True
    assert stats["frozen"][0]["uri"].endswith("/team/alice-agent/v000001")
    assert set(stats["deltaNorms"]) == {f"model.layers.{i}.self_attn.{m}" for i in range(2)
                                        for m in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert all(n > 0 for n in stats["deltaNorms"].values())
    assert all(len(m["spectrum"]) == 4 for m in stats["modules"].values())

    # 2. Same run, SIGKILLed right after a mid-run progress line (checkpoint at step 10 exists).
    work = tmp_path / "w2"
    _kill_after_step(12, [sys.executable, "-m", "dynamiclora.cli",
                          *train_args(tiny_model_dir, records_file, store_uri, work, *args)])
    assert not (work / "published.json").exists()
    assert sorted(p.name for p in work.glob("ckpt-*"))[-1] in {"ckpt-000010", "ckpt-000015", "ckpt-000020"}
    assert open_store(store_uri).list_versions(NS, TIER) == [1]

    resumed = run_cli(*train_args(tiny_model_dir, records_file, store_uri, work, *args))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert result_of(resumed)["version"] == 2

    a = adapter_tensors(store_uri, 1, tmp_path / "v1")
    b = adapter_tensors(store_uri, 2, tmp_path / "v2")
    assert a.keys() == b.keys() and len(a) == 16
    for key in a:
        assert torch.equal(a[key], b[key]), key
    s2 = json.loads(open_store(store_uri).read_file(NS, TIER, 2, "stats.json"))
    assert s2["lossCurve"] == stats["lossCurve"]

    # 3. A retried Job after publishing reports the same version instead of training again.
    again = run_cli(*train_args(tiny_model_dir, records_file, store_uri, work, *args))
    assert again.returncode == 0 and "already published" in again.stdout
    assert result_of(again)["version"] == 2
    assert open_store(store_uri).list_versions(NS, TIER) == [1, 2]

    # 4. Issue 18: a retried Job is a new pod with an empty work dir. With --work-store the checkpoints are
    # mirrored into the store, so the retry resumes from there and publishes the same adapter.
    work_store = f"{store_uri}/_work/{NS}/{TIER}/v000003"
    mirrored = (*args, "--work-store", work_store)
    _kill_after_step(12, [sys.executable, "-m", "dynamiclora.cli",
                          *train_args(tiny_model_dir, records_file, store_uri, tmp_path / "pod1", *mirrored)])
    area = Path(store_uri.removeprefix("file://"), "_work", NS, TIER, "v000003")
    latest = json.loads((area / "LATEST.json").read_text())
    assert latest["checkpoint"] in {"ckpt-000010", "ckpt-000015", "ckpt-000020"}
    retry = run_cli(*train_args(tiny_model_dir, records_file, store_uri, tmp_path / "pod2", *mirrored))
    assert retry.returncode == 0, retry.stderr
    assert "restored checkpoint" in retry.stdout and "resumed from" in retry.stdout
    assert result_of(retry)["version"] == 3
    c = adapter_tensors(store_uri, 3, tmp_path / "v3")
    assert all(torch.equal(a[key], c[key]) for key in a)
    left = sorted(p.name for p in area.iterdir())
    assert left == ["published.json"]  # the checkpoints went with the publication

    # 5. An attempt after one that published (crashed before the Job completed), even on more records:
    # it reports that version; no second version is ever published for one Job.
    late = run_cli(*train_args(tiny_model_dir, records_file, store_uri, tmp_path / "pod3", *mirrored,
                               "--max-records", "5"))  # fmt: skip
    assert late.returncode == 0 and "already published" in late.stdout, late.stdout[-2000:]
    assert result_of(late)["version"] == 3
    assert open_store(store_uri).list_versions(NS, TIER) == [1, 2, 3]


def _kill_after_step(step: int, cmd: list[str]) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith(f"step {step}/"):
                proc.send_signal(signal.SIGKILL)
                break
        assert proc.wait(timeout=120) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()


def _env() -> dict[str, str]:
    import os

    return dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")


def test_training_changes_only_the_target_tier(tiny_model_dir: Path, records_file: Path, tmp_path: Path) -> None:
    from dynamiclora.training.data import collate, tokenize
    from dynamiclora.training.model import build_stack, load_base, lora_config, target_parameters
    from dynamiclora.training.records import iter_sources, read_records

    store_uri = f"file://{tmp_path}/store"
    ref = publish_random_adapter(store_uri, "agent", tmp_path)
    frozen_dir = tmp_path / "frozen"
    open_store(store_uri).download(NS, "agent", int(ref.rsplit("v", 1)[1]), frozen_dir)
    model, tok = load_base(str(tiny_model_dir))
    torch.manual_seed(0)
    stack = build_stack(model, lora_config(4, 8, ["q_proj", "v_proj"], 0.0, "tiny"), [("agent", frozen_dir)], None)
    before = {n: p.detach().clone() for n, p in stack.named_parameters()}
    trainable = target_parameters(stack)
    assert trainable and all(".target." in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == 2 * 2 * (128 * 4 + 4 * 128)
    # Both adapters are active: the frozen tier changes the output before any training.
    assert {"target", "frozen0"} <= set(stack.base_model.active_adapters)
    good, _ = read_records(iter_sources(str(records_file)))
    batch = collate(tokenize(good[:4], tok, 64), tok.pad_token_id)
    opt = torch.optim.AdamW(list(trainable.values()), lr=0.01)
    for _ in range(3):
        loss = stack(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {n for n, p in stack.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable)
    assert any("lora_B.target" in n for n in changed)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("malformed", "records.jsonl:3: invalid JSON"),
        ("empty", "the data set is empty"),
        ("absent-module", "target module(s) ['gate_projection'] not found in the base model"),
        ("rank-too-big", "rank 512 exceeds module"),
        ("foreign-frozen", "adapter of another base model?"),
    ],
)
def test_bad_input_fails_clearly_and_writes_nothing(
    case: str, message: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_uri = f"file://{tmp_path}/store"
    data = write_records(tmp_path / "records.jsonl", n=4)
    extra: list[str] = []
    if case == "malformed":
        lines = data.read_text().splitlines()
        lines[2] = lines[2][:-5]
        data.write_text("\n".join(lines) + "\n")
    elif case == "empty":
        data.write_text("\n")
    elif case == "absent-module":
        extra = ["--target-modules", "q_proj", "gate_projection"]
    elif case == "foreign-frozen":
        extra = ["--frozen", publish_random_adapter(store_uri, "other-base", tmp_path, width=256)]
    args = train_args(tiny_model_dir, data, store_uri, tmp_path / "work", "--result-file",
                      str(tmp_path / "result.json"), *extra, rank=512 if case == "rank-too-big" else 4)
    # In-process through the same entry point as the console script (saves a torch import per case).
    code = main(args)
    out = capsys.readouterr()
    assert code == 2, out.out + out.err
    assert message in out.err
    assert "Traceback" not in out.err
    assert message in json.loads((tmp_path / "result.json").read_text())["error"]
    store = open_store(store_uri)
    assert store.list_versions(NS, TIER) == []
    assert not (tmp_path / "store" / NS / TIER).exists()
