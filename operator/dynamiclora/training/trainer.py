"""``dynamiclora train``: train one tier of one stack on new interaction records and publish it.

The run is deterministic for a given seed on CPU and resumable: with ``--work-dir`` it checkpoints
every N steps and a restarted Job continues from the newest checkpoint (adapter, optimizer, RNG,
data position), reaching the same weights as an uninterrupted run. A finished run remembers what it
published, so a Job retried after publishing reports the same version instead of training again.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynamiclora.storage import CheckpointStore, open_store
from dynamiclora.storage.base import validate_name
from dynamiclora.storage.schemes import blob_backend
from dynamiclora.training import checkpoint as ckpt
from dynamiclora.training import distributed as dist
from dynamiclora.training.compose_job import compose_ahead
from dynamiclora.training.data import (
    Example,
    drop_windows,
    fingerprint,
    parse_windows,
    select_records,
    tokenize,
)
from dynamiclora.training.dynamics import decay_start, plasticity_of, regulate_end
from dynamiclora.training.ewc import anchor
from dynamiclora.training.gate import (
    GATE_FILE,
    HELD_OUT,
    REGRESSION,
    Judged,
    decide,
    evaluate,
    figures,
    finite,
    rejection_cause,
    revisions,
    score,
    score_sets,
    split_holdout,
    superseded,
)
from dynamiclora.training.loop import TrainRun, train_loop
from dynamiclora.training.model import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    TierMismatchError,
    build_stack,
    check_adapter,
    check_targets,
    fetch_tier,
    load_base,
    lora_config,
    read_adapter_config,
    save_target,
    target_parameters,
)
from dynamiclora.training.options import TrainConfig
from dynamiclora.training.records import (
    InteractionRecord,
    RecordsError,
    SourcedRecord,
    iter_sources,
    read_records,
    record_key,
)
from dynamiclora.training.rehearsal import keyed, protect_slower_tiers, replay_examples
from dynamiclora.training.replay import newest_per_key
from dynamiclora.training.sharding import FullySharded, exchange, gather, shard
from dynamiclora.training.stats import STATS_FILE, tier_statistics
from dynamiclora.training.steady import AnswerAnchor, steady
from dynamiclora.training.work_mirror import WorkMirror

__all__ = ["evaluate", "run_training"]

Log = Callable[[str], None]
PUBLISHED = "published.json"
# Records of a quarantined window scored when it is re-examined (the newest): bounds a Job's extra work.
REEXAMINE_RECORDS = 64


def _print(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Selection:
    """The records of one training run, each list chronological."""

    batch: list[SourcedRecord]  # the new records trained on
    held: list[SourcedRecord]  # the gate's held-out pool (never trained on), newest answer per question
    history: list[SourcedRecord]  # older records, not held out: what replay may rehearse
    skipped: int  # malformed lines skipped
    window: dict[str, str]  # time span of the batch: what is quarantined if the gate rejects it
    quarantined: dict[str, list[SourcedRecord]]  # --exclude-window text -> its records, re-examined
    revised: int = 0  # questions whose older held-out answers the batch supersedes (left out of the pool)


def _select(cfg: TrainConfig, log: Log) -> Selection:
    """Read, filter and split the records (see :class:`Selection`)."""
    good, bad = read_records(iter_sources(cfg.data), cfg.bad_lines)
    for b in bad:
        log(f"warning: skipped malformed line {b}")
    filtered = select_records(good, cfg.agent, cfg.since, cfg.min_reward)
    quarantined = {text: drop_windows(filtered, [w], keep=True)
                   for text, w in zip(cfg.exclude_window, parse_windows(cfg.exclude_window), strict=True)}
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
    train, window_held = split_holdout(selected, cfg.holdout_fraction)
    # The gate's pool is every held-out record passing the filters, not only those in the
    # --max-records window: none was ever trained on, and a short window would leave few to judge by.
    earlier = filtered[: len(filtered) - len(selected)]
    history, held_before = split_holdout(earlier, cfg.holdout_fraction)
    held, revised = _unrevised(held_before, window_held, revisions([r.record for r in selected],
                                                                   [r.record for r in earlier]))
    if not train:
        raise RecordsError(
            f"no training records in {cfg.data}: all {len(selected)} selected record(s) belong to the "
            f"held-out slice of the quality gate (--holdout-fraction {cfg.holdout_fraction}); add records"
        )
    window = {"from": selected[0].record.timestamp.isoformat(), "to": selected[-1].record.timestamp.isoformat()}
    if revised:
        log(f"quality gate: {revised} held-out answer(s) superseded by this window's records are not judged")
    return Selection(train, held, history, len(bad), window, quarantined, revised)


def _unrevised(held_before: list[SourcedRecord], window_held: list[SourcedRecord],
               revised: Mapping[str, str]) -> tuple[list[SourcedRecord], int]:  # fmt: skip
    """The gate's held-out pool: the newest answer per question, once the older answers ``revised``
    supersedes (:func:`~dynamiclora.training.gate.revisions`) are left out; and how many questions lost one.

    Superseded answers leave before the newest is chosen, so an older held-out answer equal to the new
    one (a fact changed and changed back) is still judged. The window's own held-out records are never
    superseded."""
    kept: list[SourcedRecord] = []
    dropped: set[str] = set()
    for h in held_before:
        if superseded(h.record, revised):
            dropped.add(record_key(h.record))
        else:
            kept.append(h)
    return newest_per_key(kept + window_held), len(dropped)


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


@dataclass
class GateSets:
    """The quality gate's evaluation sets: examples and the records they came from, per set name."""

    examples: dict[str, list[Example]]
    records: dict[str, list[InteractionRecord]]




def _gate_sets(cfg: TrainConfig, held: list[SourcedRecord], tokenizer: Any) -> GateSets:
    """Newest held-out records, and the regression set if given."""
    sets = GateSets({}, {})
    sets.examples[HELD_OUT], sets.records[HELD_OUT] = keyed(held[-cfg.gate_records:], tokenizer, cfg.max_seq_len)
    if cfg.regression_data:
        good, _bad = read_records(iter_sources(cfg.regression_data), cfg.bad_lines)
        ex, recs = keyed(select_records(good, max_records=cfg.gate_records), tokenizer, cfg.max_seq_len)
        if not ex:
            raise RecordsError(f"--regression-data {cfg.regression_data}: no record with a learnable token")
        sets.examples[REGRESSION], sets.records[REGRESSION] = ex, recs
    return sets


def _reexamine(cfg: TrainConfig, model: Any, sel: Selection, tokenizer: Any, log: Log) -> list[str]:
    """Quarantined windows whose records the served stack now answers as they do, released.

    A window was quarantined because its records contradicted what the agent knew. Once most of them
    agree with what the served stack answers (the user corrected the regression set, or the world really
    changed and honest records taught it), they are no contradiction any more. A poisoned window never
    agrees, so it stays quarantined; a window with nothing left to judge stays too.
    """
    released: list[str] = []
    for window, records in sel.quarantined.items():
        examples, _ = keyed(records[-REEXAMINE_RECORDS:], tokenizer, cfg.max_seq_len)
        agree = sum(s.correct for s in score(model, examples, cfg.batch_size, int(tokenizer.pad_token_id)))
        if examples and 2 * agree > len(examples):
            released.append(window)
        log(f"quarantine {window}: the served stack agrees with {agree} of {len(examples)} record(s)"
            f"{': released' if window in released else ''}")
    return released






def _steady(cfg: TrainConfig, model: Any, tokenizer: Any, log: Log) -> AnswerAnchor | None:
    """The ``--anchor-data`` anchor under the stack as loaded (what is served), if any."""
    if not cfg.anchor_data or not cfg.anchor_weight:
        return None
    good, _bad = read_records(iter_sources(cfg.anchor_data), cfg.bad_lines)
    kept = steady(cfg.anchor_weight, newest_per_key(select_records(good)), model, tokenizer, cfg.max_seq_len,
                  cfg.batch_size, cfg.seed)
    if kept is None or not kept.examples:
        raise RecordsError(f"--anchor-data {cfg.anchor_data}: no record with a learnable token")
    log(f"anchor: the answers to {len(kept.examples)} prompt(s) of --anchor-data kept steady "
        f"(weight {cfg.anchor_weight:g})")
    return kept


def _run_fingerprint(cfg: TrainConfig, data_fp: str, refs: list[dict[str, Any]]) -> str:
    base_cfg = Path(cfg.base_model, "config.json")
    doc = {
        "base": hashlib.sha256(base_cfg.read_bytes()).hexdigest() if base_cfg.exists() else cfg.base_model,
        "data": data_fp, "refs": refs, "rank": cfg.rank, "alpha": cfg.alpha,
        "targets": sorted(cfg.target_modules), "dropout": cfg.dropout, "lr": cfg.lr, "wd": cfg.weight_decay,
        "steps": cfg.steps, "epochs": cfg.epochs, "batch": cfg.batch_size, "seed": cfg.seed,
        # A checkpoint's optimizer state is laid out per strategy (by index, by parameter name).
        **({"strategy": cfg.strategy} if cfg.strategy != "ddp" else {}),
        **({"ewc": [cfg.ewc_lambda, cfg.ewc_records]} if cfg.ewc_lambda else {}),
        **({"anchor": [cfg.anchor_data, cfg.anchor_weight]} if cfg.anchor_data and cfg.anchor_weight else {}),
        "gate": [cfg.gate_max_regression, cfg.gate_records, cfg.regression_data, cfg.gate_significance],
        "replay": [cfg.replay_fraction, cfg.replay_budget],
        "protection": cfg.plastic_rank,
        "plasticity": [cfg.screen_threshold, cfg.free_threshold, cfg.free_decay, cfg.screened_decay,
                       cfg.reference_interactions, cfg.energy_budget],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def run_training(cfg: TrainConfig, log: Log = _print) -> dict[str, Any]:
    """Train, publish and return the compact result (see docs/training.md).

    Under ``torchrun`` every process trains its share of each batch (training/distributed.py); rank 0
    alone checkpoints, judges and publishes, the others report ``{"worker": rank}``.
    """
    d = dist.init_from_env()
    try:
        return _run_training(cfg, log if d.leader else _quiet, d)
    finally:
        dist.close(d)


def _quiet(_msg: str) -> None:
    """Ranks other than 0 do not narrate: their lines would repeat rank 0's."""


def _run_training(cfg: TrainConfig, log: Log, d: dist.Dist) -> dict[str, Any]:
    started = time.monotonic()
    validate_name("namespace", cfg.namespace)
    validate_name("tier", cfg.tier)
    dist.check_batch(cfg.batch_size, d)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    store = open_store(cfg.output_store)
    if (own := _published_in_store(cfg, store)) is not None:
        log(f"already published {own['uri']} (this Job's work area); nothing to do")
        return own if d.leader else dist.worker_result(d)
    sel = _select(cfg, log)
    model, tokenizer = load_base(cfg.base_model)
    check_targets(model, cfg.target_modules, cfg.rank, f"tier {cfg.namespace}/{cfg.tier}")
    examples, data_info = _tokenize(cfg, sel.batch, sel.skipped, tokenizer)
    data_info["heldOut"] = len(sel.held)
    if sel.revised:
        data_info["heldOutRevised"] = sel.revised
    gate_sets = _gate_sets(cfg, sel.held, tokenizer)
    log(f"data: {data_info['records']} records, {data_info['tokens']} learned tokens, {len(sel.held)} held out")
    pad = int(tokenizer.pad_token_id)

    with tempfile.TemporaryDirectory(prefix="dynamiclora-train-") as tmp_text:
        tmp = Path(tmp_text)
        frozen, refs, init_dir = _load_inputs(cfg, model, store, tmp)
        torch.manual_seed(cfg.seed)
        peft_model = build_stack(model, lora_config(cfg.rank, cfg.alpha, cfg.target_modules, cfg.dropout,
                                                    cfg.base_model), frozen, init_dir)
        # Baseline = the stack as loaded (frozen tiers + --init-from, i.e. what is served): the gate's
        # reference and what replay measures surprise under, before any parameter moves.
        baseline = score_sets(peft_model, gate_sets.examples, cfg.batch_size, pad)
        data_info["released"] = _reexamine(cfg, peft_model, sel, tokenizer, log)
        replayed, plan, replay_info = replay_examples(cfg, peft_model, sel.history, sel.batch, len(examples),
                                                      tokenizer, log)
        data_info.update(replay_info)
        if (decay := decay_start(cfg, peft_model, init_dir, len(sel.batch), tmp, log)) is not None:
            data_info["decay"] = decay
        protect = protect_slower_tiers(cfg, peft_model, frozen, log)
        if protect is not None:
            data_info["protection"] = protect.summary()
        ewc = anchor(cfg.ewc_lambda, cfg.ewc_records, peft_model, sel.history, sel.batch, tokenizer, cfg.max_seq_len)
        if ewc is not None:
            data_info["ewc"] = ewc.summary()
            log(f"ewc: lambda {cfg.ewc_lambda:g}, Fisher information of {ewc.records} stored question(s)")
        kept = _steady(cfg, peft_model, tokenizer, log)
        if kept is not None:
            data_info["anchor"] = kept.summary()
        mix = examples * plan.new_repeats + replayed
        fp = _run_fingerprint(cfg, fingerprint(mix), refs)
        # The work directory is rank 0's: the others keep nothing (rank 0 hands them the resume state).
        work = Path(cfg.work_dir) if cfg.work_dir and d.leader else tmp / "work"
        work.mkdir(parents=True, exist_ok=True)
        ckpt.clean_temporaries(work)
        mirror = _work_mirror(cfg, work, fp, log) if d.leader else None
        # With a mirror, the work area is this version's: whatever an earlier attempt published is it.
        prior = dist.broadcast(_already_published(work, None if mirror else fp) if d.leader else None, d)
        if prior is not None:
            log(f"already published {prior['uri']}; nothing to do")
            return prior if d.leader else dist.worker_result(d)
        saved = mirror.checkpoint_saved if mirror else None
        forget = (lambda: mirror.forget_checkpoints(work)) if mirror else None
        sync = exchange(cfg.strategy, d)
        if isinstance(sync, FullySharded):
            data_info["sharding"] = held = shard(peft_model)
            log(f"fsdp: {held['units']} units sharded over {d.world} processes; this one holds "
                f"{held['heldElements']} of {held['elements']} parameter elements")
        run = train_loop(cfg, peft_model, mix, examples[: cfg.eval_records], pad, work, fp, log, protect, saved,
                          forget, d, sync, ewc, kept)  # fmt: skip
        if isinstance(sync, FullySharded):
            trained = gather(target_parameters(peft_model))  # every rank: a collective
            # The sharded stack goes before the whole one is built: both at once would double the host memory.
            del model, peft_model, protect
            gc.collect()
            # The gate and publication run on the unsharded stack (rank 0), as after a ddp run.
            peft_model = _unsharded(cfg, frozen, init_dir, trained) if d.leader else None
        if not d.leader:
            return dist.worker_result(d, {"steps": run.total})
        if (homeostasis := regulate_end(cfg, peft_model, init_dir, tmp, log)) is not None:
            data_info["homeostasis"] = homeostasis
        verdict = _judge(cfg, peft_model, gate_sets, baseline, sel.batch, pad)
        log(f"quality gate: {verdict['reason']}")
        stats = _statistics(cfg, peft_model, work, init_dir, data_info)
        result = _publish(cfg, store, work, fp, refs, stats, run, verdict, sel, started, log)
        if mirror:
            mirror.published(work)
        if verdict.get("accepted") and (label := compose_ahead(cfg, int(result["version"]), log)):
            result["composedAhead"] = label
        return result


def _unsharded(cfg: TrainConfig, frozen: list[tuple[str, Path]], init_dir: Path | None,
               trained: dict[str, torch.Tensor]) -> Any:  # fmt: skip
    """The stack rebuilt whole around the gathered trained tier (after an ``fsdp`` run, on rank 0)."""
    model, _tokenizer = load_base(cfg.base_model)
    peft_model = build_stack(model, lora_config(cfg.rank, cfg.alpha, cfg.target_modules, cfg.dropout,
                                                cfg.base_model), frozen, init_dir)  # fmt: skip
    with torch.no_grad():
        for name, p in target_parameters(peft_model).items():
            p.copy_(trained[name])
    return peft_model


def _load_inputs(cfg: TrainConfig, model: Any, store: CheckpointStore,
                 tmp: Path) -> tuple[list[tuple[str, Path]], list[dict[str, Any]], Path | None]:  # fmt: skip
    """Download the frozen slower tiers and the version to start from; ``(frozen, refs, init dir)``."""
    frozen: list[tuple[str, Path]] = []
    refs: list[dict[str, Any]] = []
    for i, ref in enumerate(cfg.frozen):
        directory, meta = fetch_tier(ref, tmp / f"frozen{i}")
        check_adapter(model, directory, f"frozen tier {ref}")
        frozen.append((f"frozen tier {ref}", directory))
        refs.append(meta)
    init_dir, init_meta = _init_source(cfg, store, tmp / "init")
    if init_meta:
        refs.append({"init": init_meta})
    return frozen, refs, init_dir


# Versions published on the tier since this Job's own (by other Jobs) are few: the operator runs one
# training Job per tier at a time, and a consolidation or two may land in between.
_OWN_VERSION_LOOKBACK = 16


def _published_in_store(cfg: TrainConfig, store: CheckpointStore) -> dict[str, Any] | None:
    """The version an earlier attempt of this Job published, found by its work area in the manifests.

    The attempt may have died after its manifest was written and before its marker reached the work
    area: without this look, the retry would publish the same training a second time.
    """
    if not cfg.work_store:
        return None
    for v in reversed(store.list_versions(cfg.namespace, cfg.tier)[-_OWN_VERSION_LOOKBACK:]):
        ref = store.get(cfg.namespace, cfg.tier, v)
        md = ref.manifest.metadata
        if md.get("kind") == "training" and md.get("workStore") == cfg.work_store:
            return {"namespace": cfg.namespace, "tier": cfg.tier, "version": v, "uri": ref.uri, "digest": ref.digest,
                    "records": md.get("records"), "initialLoss": md.get("initialLoss"),
                    "finalLoss": md.get("finalLoss"), "deltaNorm": md.get("deltaNorm"), "gate": md.get("gate"),
                    "replayed": md.get("replayed", 0), "alreadyPublished": True}  # fmt: skip
    return None


def _already_published(work: Path, fp: str | None) -> dict[str, Any] | None:
    """The result of a finished run (with the same fingerprint unless ``fp`` is None): a retry reports it."""
    done = work / PUBLISHED
    if not done.exists():
        return None
    prior = json.loads(done.read_text())
    return dict(prior["result"]) if fp is None or prior.get("fingerprint") == fp else None


def _work_mirror(cfg: TrainConfig, work: Path, fp: str, log: Log) -> WorkMirror | None:
    """The store side of this version's work area, restored into ``work`` (None without ``--work-store``)."""
    if not cfg.work_store:
        return None
    mirror = WorkMirror(blob_backend(cfg.work_store), PUBLISHED)
    mirror.restore(work, log)
    return mirror


def _judge(cfg: TrainConfig, peft_model: Any, gate_sets: GateSets, baseline: dict[str, list[Any]],
           batch: list[SourcedRecord], pad: int) -> dict[str, Any]:  # fmt: skip
    """The quality gate's verdict on the trained stack; a rejection says whether the batch is to blame."""
    candidate = score_sets(peft_model, gate_sets.examples, cfg.batch_size, pad)
    verdict = decide(figures(baseline, candidate), cfg.gate_max_regression, cfg.gate_significance).to_dict()
    if not verdict["accepted"]:
        judged = [Judged(rec, b, a) for name in baseline
                  for rec, b, a in zip(gate_sets.records[name], baseline[name], candidate[name], strict=True)]
        cause, contradicting = rejection_cause([r.record for r in batch], judged)
        verdict.update(cause=cause, contradictions=contradicting)
    return verdict


def _statistics(cfg: TrainConfig, peft_model: Any, work: Path, init_dir: Path | None,
                data_info: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Save the trained tier into ``work/final`` and compute its statistics (phases from the version before)."""
    final = work / "final"
    save_target(peft_model, final, cfg.base_model)
    plasticity = plasticity_of(cfg)
    stats = tier_statistics(final, phases=plasticity.phases if plasticity else None, previous=init_dir)
    stats.update(data_info)
    return stats


def _publish(cfg: TrainConfig, store: CheckpointStore, work: Path, fp: str, refs: list[dict[str, Any]],
             stats: dict[str, Any], run: TrainRun, verdict: dict[str, Any], sel: Selection, started: float,
             log: Log) -> dict[str, Any]:  # fmt: skip
    """Write the version's files, publish it atomically and remember the result in ``work``."""
    final = work / "final"
    init_meta = next((r["init"] for r in refs if "init" in r), None)
    stats.update({
        "gate": verdict,
        "namespace": cfg.namespace, "tier": cfg.tier, "baseModel": cfg.base_model,
        "steps": run.total, "batchSize": cfg.batch_size, "lr": cfg.lr, "rank": cfg.rank, "alpha": cfg.alpha,
        "targetModules": sorted(cfg.target_modules), "seed": cfg.seed,
        "initialLoss": finite(run.initial_loss), "finalLoss": finite(run.final_loss),
        "lossCurve": _downsample(run.curve, 500),
        "tokensProcessed": run.processed, "durationSeconds": round(run.elapsed, 3),
        "tokensPerSecond": round(run.processed / max(run.elapsed, 1e-9), 1),
        "frozen": [r for r in refs if "init" not in r], "initFrom": init_meta, "frozenUnchanged": True,
        "runFingerprint": fp,
    })  # fmt: skip
    stats = _finite_doc(stats)
    (final / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True, allow_nan=False))
    (final / GATE_FILE).write_text(json.dumps(verdict, indent=2, sort_keys=True))
    files = {n: final / n for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, STATS_FILE, GATE_FILE)}
    meta = {"kind": "training", "records": stats["records"], "initialLoss": finite(run.initial_loss),
            "finalLoss": finite(run.final_loss), "deltaNorm": stats["norm"], "frozen": stats["frozen"],
            "gate": verdict,
            "replayed": stats.get("replayed", 0), "released": stats.get("released", []),
            # The records' time span: what the operator quarantines when the gate rejects this version.
            "window": sel.window}  # fmt: skip
    if os.environ.get("DYNAMICLORA_JOB"):  # the Job's name, for the audit trail
        meta["job"] = os.environ["DYNAMICLORA_JOB"]
    if cfg.records_total is not None:
        meta["recordsConsumed"] = cfg.records_total
    if cfg.work_store:  # the Job's identity: a retry finds what an attempt of it published (_published_in_store)
        meta["workStore"] = cfg.work_store
    published = store.publish(cfg.namespace, cfg.tier, files, meta, progress=lambda m: log(f"store: {m}"))
    result = {
        "namespace": cfg.namespace, "tier": cfg.tier, "version": published.version,
        "uri": published.uri, "digest": published.digest, "records": stats["records"],
        "tokens": stats["tokens"], "steps": run.total,
        "initialLoss": finite(run.initial_loss), "finalLoss": finite(run.final_loss),
        "deltaNorm": stats["norm"], "heldOut": len(sel.held), "replayed": stats.get("replayed", 0),
        "gate": verdict, "durationSeconds": round(time.monotonic() - started, 3),
    }  # fmt: skip
    tmp_done = work / f".{PUBLISHED}.tmp"
    tmp_done.write_text(json.dumps({"fingerprint": fp, "result": result}))
    os.replace(tmp_done, work / PUBLISHED)
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
        dest, meta = fetch_tier(cfg.init_from, dest)
    acfg = read_adapter_config(dest)
    if int(acfg.get("r", -1)) != cfg.rank or sorted(acfg.get("target_modules") or []) != sorted(cfg.target_modules):
        raise TierMismatchError(
            f"--init-from {meta['uri']}: adapter has rank {acfg.get('r')} and target modules "
            f"{sorted(acfg.get('target_modules') or [])}, but the tier asks for rank {cfg.rank} and "
            f"{sorted(cfg.target_modules)}"
        )
    return dest, meta


def _downsample(values: list[float], limit: int) -> list[float | None]:
    stride = max(1, math.ceil(len(values) / limit))
    return [finite(v) for v in values[::stride]]


def _finite_doc(doc: Any) -> Any:
    """``doc`` with every NaN or infinite float replaced by ``None``: readers refuse non-finite JSON."""
    if isinstance(doc, float):
        return finite(doc, 12)
    if isinstance(doc, dict):
        return {k: _finite_doc(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_finite_doc(v) for v in doc]
    return doc
