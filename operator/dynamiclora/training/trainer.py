"""``dynamiclora train``: train one tier of one stack on new interaction records and publish it.

The run is deterministic for a given seed on CPU and resumable: with ``--work-dir`` it checkpoints
every N steps and a restarted Job continues from the newest checkpoint (adapter, optimizer, RNG,
data position), reaching the same weights as an uninterrupted run. A finished run remembers what it
published, so a Job retried after publishing reports the same version instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dynamiclora.storage import CheckpointStore, open_store, parse_tier_ref
from dynamiclora.storage.base import validate_name
from dynamiclora.training import checkpoint as ckpt
from dynamiclora.training.data import (
    Example,
    batch_indices,
    collate,
    drop_windows,
    fingerprint,
    parse_windows,
    select_records,
    steps_per_epoch,
    tokenize,
)
from dynamiclora.training.gate import (
    GATE_FILE,
    HELD_OUT,
    decide,
    evaluate,
    evaluate_sets,
    figures,
    split_holdout,
)
from dynamiclora.training.model import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    TierMismatchError,
    build_stack,
    check_adapter,
    check_targets,
    load_base,
    lora_config,
    read_adapter_config,
    save_target,
    target_parameters,
)
from dynamiclora.training.options import TrainConfig
from dynamiclora.training.records import RecordsError, SourcedRecord, iter_sources, read_records
from dynamiclora.training.stats import STATS_FILE, tier_statistics

__all__ = ["evaluate", "run_training"]

Log = Callable[[str], None]
PUBLISHED = "published.json"


def _print(msg: str) -> None:
    print(msg, flush=True)


def _fetch(ref_text: str, dest: Path, default_store: CheckpointStore | None = None) -> tuple[Path, dict[str, Any]]:
    """Download a tier reference (latest version when none is given) into ``dest``."""
    ref = parse_tier_ref(ref_text)
    store = open_store(ref.store_uri) if default_store is None else default_store
    version = ref.version
    if version is None:
        latest = store.latest(ref.namespace, ref.tier)
        if latest is None:
            raise TierMismatchError(f"{ref_text}: the tier has no published version")
        version = latest.version
    got = store.download(ref.namespace, ref.tier, version, dest)
    return dest, {"uri": got.uri, "version": got.version, "digest": got.digest}


def _select(cfg: TrainConfig, log: Log) -> tuple[list[SourcedRecord], list[SourcedRecord], int, dict[str, str]]:
    """``(training records, held-out records, bad lines skipped, window)``, each chronological.

    ``window`` is the time span of the selected records (training and held-out): what the operator
    quarantines if the gate rejects the version trained on them.
    """
    good, bad = read_records(iter_sources(cfg.data), cfg.bad_lines)
    for b in bad:
        log(f"warning: skipped malformed line {b}")
    filtered = select_records(good, cfg.agent, cfg.since, cfg.min_reward)
    if cfg.exclude_window:  # quarantined windows (rejected updates): neither trained on nor judged by
        before = len(filtered)
        filtered = drop_windows(filtered, parse_windows(cfg.exclude_window))
        log(f"quarantine: {before - len(filtered)} record(s) in {len(cfg.exclude_window)} excluded window(s)")
    selected = filtered[-cfg.max_records:] if cfg.max_records else filtered
    if not selected:
        raise RecordsError(
            f"no training records in {cfg.data}: {len(good)} valid record(s), none left after the "
            f"filters (agent={cfg.agent}, since={cfg.since}, min-reward={cfg.min_reward})"
            if good else f"no training records in {cfg.data}: the data set is empty"
        )
    train, _ = split_holdout(selected, cfg.holdout_fraction)
    # The gate's pool is every held-out record passing the filters, not only those in the
    # --max-records window: none was ever trained on, and a short window would leave few to judge by.
    _, held = split_holdout(filtered, cfg.holdout_fraction)
    if not train:
        raise RecordsError(
            f"no training records in {cfg.data}: all {len(selected)} selected record(s) belong to the "
            f"held-out slice of the quality gate (--holdout-fraction {cfg.holdout_fraction}); add records"
        )
    window = {"from": selected[0].record.timestamp.isoformat(), "to": selected[-1].record.timestamp.isoformat()}
    return train, held, len(bad), window


def _tokenize(cfg: TrainConfig, selected: list[SourcedRecord], skipped: int,
              tokenizer: Any) -> tuple[list[Example], dict[str, Any]]:
    examples = tokenize(selected, tokenizer, cfg.max_seq_len)
    if not examples:
        raise RecordsError(f"no record of {cfg.data} has a learnable token within --max-seq-len {cfg.max_seq_len}")
    info = {
        "records": len(examples),
        "badLinesSkipped": skipped,
        "tokens": sum(e.trained_tokens for e in examples),
        "firstTimestamp": selected[0].record.timestamp.isoformat(),
        "lastTimestamp": selected[-1].record.timestamp.isoformat(),
    }
    return examples, info


def _gate_sets(cfg: TrainConfig, held: list[SourcedRecord], tokenizer: Any) -> dict[str, list[Example]]:
    """The quality gate's evaluation sets: newest held-out records, and the regression set if given."""
    sets = {HELD_OUT: tokenize(held[-cfg.gate_records:], tokenizer, cfg.max_seq_len)}
    if cfg.regression_data:
        good, _bad = read_records(iter_sources(cfg.regression_data), cfg.bad_lines)
        regression = tokenize(select_records(good, max_records=cfg.gate_records), tokenizer, cfg.max_seq_len)
        if not regression:
            raise RecordsError(f"--regression-data {cfg.regression_data}: no record with a learnable token")
        sets["regression"] = regression
    return sets


def _run_fingerprint(cfg: TrainConfig, data_fp: str, refs: list[dict[str, Any]]) -> str:
    base_cfg = Path(cfg.base_model, "config.json")
    doc = {
        "base": hashlib.sha256(base_cfg.read_bytes()).hexdigest() if base_cfg.exists() else cfg.base_model,
        "data": data_fp, "refs": refs, "rank": cfg.rank, "alpha": cfg.alpha,
        "targets": sorted(cfg.target_modules), "dropout": cfg.dropout, "lr": cfg.lr, "wd": cfg.weight_decay,
        "steps": cfg.steps, "epochs": cfg.epochs, "batch": cfg.batch_size, "seed": cfg.seed,
        "gate": [cfg.gate_max_regression, cfg.gate_records, cfg.regression_data, cfg.gate_tolerance],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def run_training(cfg: TrainConfig, log: Log = _print) -> dict[str, Any]:
    """Train, publish and return the compact result (see docs/training.md)."""
    started = time.monotonic()
    validate_name("namespace", cfg.namespace)
    validate_name("tier", cfg.tier)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    store = open_store(cfg.output_store)
    label = f"tier {cfg.namespace}/{cfg.tier}"

    selected, held, skipped, window = _select(cfg, log)
    model, tokenizer = load_base(cfg.base_model)
    check_targets(model, cfg.target_modules, cfg.rank, label)
    examples, data_info = _tokenize(cfg, selected, skipped, tokenizer)
    data_info["heldOut"] = len(held)
    gate_sets = _gate_sets(cfg, held, tokenizer)
    log(f"data: {data_info['records']} records, {data_info['tokens']} learned tokens, {len(held)} held out")

    with tempfile.TemporaryDirectory(prefix="dynamiclora-train-") as tmp_text:
        tmp = Path(tmp_text)
        frozen: list[tuple[str, Path]] = []
        refs: list[dict[str, Any]] = []
        for i, ref in enumerate(cfg.frozen):
            directory, meta = _fetch(ref, tmp / f"frozen{i}")
            check_adapter(model, directory, f"frozen tier {ref}")
            frozen.append((f"frozen tier {ref}", directory))
            refs.append(meta)
        init_dir, init_meta = _init_source(cfg, store, tmp / "init")
        if init_meta:
            refs.append({"init": init_meta})

        fp = _run_fingerprint(cfg, fingerprint(examples), refs)
        work = Path(cfg.work_dir) if cfg.work_dir else tmp / "work"
        work.mkdir(parents=True, exist_ok=True)
        done = work / PUBLISHED
        if done.exists():
            prior = json.loads(done.read_text())
            if prior.get("fingerprint") == fp:
                log(f"already published {prior['result']['uri']}; nothing to do")
                return dict(prior["result"])
        ckpt.clean_temporaries(work)

        torch.manual_seed(cfg.seed)
        peft_model = build_stack(model, lora_config(cfg.rank, cfg.alpha, cfg.target_modules, cfg.dropout,
                                                    cfg.base_model), frozen, init_dir)
        params = target_parameters(peft_model)
        frozen_before = {n: p.detach().clone() for n, p in peft_model.named_parameters()
                         if "lora_" in n and not p.requires_grad}
        opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = cfg.steps or cfg.epochs * steps_per_epoch(len(examples), cfg.batch_size)
        pad = int(tokenizer.pad_token_id)
        eval_set = examples[: cfg.eval_records]
        # Baseline = the stack as loaded (frozen tiers + --init-from, i.e. what is served), before any
        # resumed parameters are copied in, so a resumed run computes the same figures.
        gate_baseline = evaluate_sets(peft_model, gate_sets, cfg.batch_size, pad)

        state = ckpt.load_latest(work, fp)
        if state is None:
            step, curve, processed, elapsed = 0, [], 0, 0.0
            initial_loss = evaluate(peft_model, eval_set, cfg.batch_size, pad)
        else:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(state["params"][n])
            opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            step, curve = int(state["step"]), list(state["curve"])
            processed, elapsed = int(state["processed"]), float(state["elapsed"])
            initial_loss = float(state["initial_loss"])
            log(f"resumed from {ckpt.list_checkpoints(work)[-1]} at step {step}/{total}")

        log(f"training {label}: {total} steps, batch {cfg.batch_size}, rank {cfg.rank}, "
            f"{len(frozen)} frozen tier(s), initial loss {initial_loss:.4f}")
        seg_start = time.monotonic()
        seg_tokens = 0
        while step < total:
            peft_model.train()
            idx = batch_indices(step, len(examples), cfg.batch_size, cfg.seed)
            batch = collate([examples[i] for i in idx], pad)
            loss = peft_model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            curve.append(float(loss.detach()))
            n_tok = int(batch["attention_mask"].sum())
            processed += n_tok
            seg_tokens += n_tok
            if step % cfg.log_every == 0 or step == total:
                rate = seg_tokens / max(time.monotonic() - seg_start, 1e-9)
                log(f"step {step}/{total} loss {curve[-1]:.4f} tokens/s {rate:.0f}")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                ckpt.save_checkpoint(work, step, {
                    "fingerprint": fp, "step": step, "curve": curve, "processed": processed,
                    "elapsed": elapsed + time.monotonic() - seg_start, "initial_loss": initial_loss,
                    "params": {n: p.detach().clone() for n, p in params.items()},
                    "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                })
        elapsed += time.monotonic() - seg_start
        final_loss = evaluate(peft_model, eval_set, cfg.batch_size, pad)
        verdict = decide(figures(gate_sets, gate_baseline, evaluate_sets(peft_model, gate_sets, cfg.batch_size, pad)),
                         cfg.gate_max_regression, cfg.gate_tolerance).to_dict()
        log(f"quality gate: {verdict['reason']}")
        unchanged = all(torch.equal(p, frozen_before[n]) for n, p in peft_model.named_parameters()
                        if n in frozen_before)
        if not unchanged:  # pragma: no cover - would mean the freezing logic is broken
            raise RuntimeError("a frozen tier changed during training")

        final = work / "final"
        save_target(peft_model, final, cfg.base_model)
        stats = tier_statistics(final)
        stats.update(data_info)
        stats.update({
            "gate": verdict,
            "namespace": cfg.namespace, "tier": cfg.tier, "baseModel": cfg.base_model,
            "steps": total, "batchSize": cfg.batch_size, "lr": cfg.lr, "rank": cfg.rank, "alpha": cfg.alpha,
            "targetModules": sorted(cfg.target_modules), "seed": cfg.seed,
            "initialLoss": initial_loss, "finalLoss": final_loss, "lossCurve": _downsample(curve, 500),
            "tokensProcessed": processed, "durationSeconds": round(elapsed, 3),
            "tokensPerSecond": round(processed / max(elapsed, 1e-9), 1),
            "frozen": [r for r in refs if "init" not in r], "initFrom": init_meta, "frozenUnchanged": unchanged,
            "runFingerprint": fp,
        })
        (final / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True))
        (final / GATE_FILE).write_text(json.dumps(verdict, indent=2, sort_keys=True))
        files = {n: final / n for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, STATS_FILE, GATE_FILE)}
        meta = {"kind": "training", "records": stats["records"], "initialLoss": initial_loss,
                "finalLoss": final_loss, "deltaNorm": stats["norm"], "frozen": stats["frozen"], "gate": verdict,
                # The records' time span: what the operator quarantines when the gate rejects this version.
                "window": window}
        if os.environ.get("DYNAMICLORA_JOB"):  # the Job's name, for the audit trail
            meta["job"] = os.environ["DYNAMICLORA_JOB"]
        published = store.publish(cfg.namespace, cfg.tier, files, meta, progress=lambda m: log(f"store: {m}"))
        result = {
            "namespace": cfg.namespace, "tier": cfg.tier, "version": published.version,
            "uri": published.uri, "digest": published.digest, "records": stats["records"],
            "tokens": stats["tokens"], "steps": total,
            "initialLoss": round(initial_loss, 6), "finalLoss": round(final_loss, 6),
            "deltaNorm": stats["norm"], "heldOut": len(held), "gate": verdict,
            "durationSeconds": round(time.monotonic() - started, 3),
        }
        tmp_done = work / f".{PUBLISHED}.tmp"
        tmp_done.write_text(json.dumps({"fingerprint": fp, "result": result}))
        os.replace(tmp_done, done)
        return result


def _init_source(cfg: TrainConfig, store: CheckpointStore, dest: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """Resolve ``--init-from`` and check the adapter has the tier's rank and target modules."""
    if not cfg.init_from:
        return None, None
    if cfg.init_from == "latest":
        latest = store.latest(cfg.namespace, cfg.tier)
        if latest is None:
            return None, None
        store.download(cfg.namespace, cfg.tier, latest.version, dest)
        meta: dict[str, Any] = {"uri": latest.uri, "version": latest.version, "digest": latest.digest}
    else:
        dest, meta = _fetch(cfg.init_from, dest)
    acfg = read_adapter_config(dest)
    if int(acfg.get("r", -1)) != cfg.rank or sorted(acfg.get("target_modules") or []) != sorted(cfg.target_modules):
        raise TierMismatchError(
            f"--init-from {meta['uri']}: adapter has rank {acfg.get('r')} and target modules "
            f"{sorted(acfg.get('target_modules') or [])}, but the tier asks for rank {cfg.rank} and "
            f"{sorted(cfg.target_modules)}"
        )
    return dest, meta


def _downsample(values: list[float], limit: int) -> list[float]:
    if len(values) <= limit:
        return [round(v, 6) for v in values]
    stride = math.ceil(len(values) / limit)
    return [round(v, 6) for v in values[::stride]]
