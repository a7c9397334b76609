"""``dynamiclora consolidate``: migration and consensus Jobs over the checkpoint store.

Both modes read tier versions from the store, call the memory core (:func:`dynamiclora.memory.migrate`,
:func:`dynamiclora.memory.consensus`) and publish new versions with ``stats.json``. Every output
manifest records what it was derived from (``derivedFrom``: input URIs and digests, and ``destBase``:
the destination version it started from). A Job retried after publishing the destination but before
the other outputs sees that record, recomputes from the same inputs (the core is deterministic) and
publishes only what is missing, so components are never moved twice.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynamiclora.memory import (
    ConsensusConfig,
    Decision,
    MigrationPolicy,
    StabilityConfig,
    TierDelta,
    consensus,
    load_adapter,
    migrate,
    save_adapter,
    tier_sub,
    truncate,
)
from dynamiclora.memory.recurrence import record_of
from dynamiclora.storage import CheckpointStore, TierRef, VersionRef, open_store, parse_tier_ref
from dynamiclora.training.anchored import AnchoredRun, TierTraining, train_anchored
from dynamiclora.training.consolidate_gate import judge
from dynamiclora.training.distill import (
    DEFAULT_BATCH,
    DEFAULT_LR,
    DEFAULT_STEPS,
    anchor_set,
    decide,
    distill_set,
    read_distilled,
    refit_set,
    stash,
    steady_records,
    taught_records,
    train_tier,
    training_spans,
    write_distilled,
)
from dynamiclora.training.options import ConsolidateConfig
from dynamiclora.training.stats import STATS_FILE, tier_statistics

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


class _Io:
    """Store access for one run: loading versions as deltas, publishing deltas as versions."""

    def __init__(self, tmp: Path, log: Log) -> None:
        self.tmp = tmp
        self.log = log
        self._stores: dict[str, CheckpointStore] = {}
        self._n = 0
        self.dirs: dict[str, Path] = {}  # version URI -> where it was downloaded

    def store(self, ref: TierRef) -> CheckpointStore:
        if ref.store_uri not in self._stores:
            self._stores[ref.store_uri] = open_store(ref.store_uri)
        return self._stores[ref.store_uri]

    def versions(self, ref: TierRef) -> list[int]:
        return self.store(ref).list_versions(ref.namespace, ref.tier)

    def load(self, ref: TierRef, version: int) -> tuple[TierDelta, Any, VersionRef]:
        self._n += 1
        got = self.store(ref).download(ref.namespace, ref.tier, version, self.tmp / f"in{self._n}")
        delta, meta = load_adapter(self.tmp / f"in{self._n}")
        self.dirs[got.uri] = self.tmp / f"in{self._n}"
        return delta, meta, got

    def load_latest(self, ref_text: str) -> TierDelta:
        ref = parse_tier_ref(ref_text)
        versions = [v for v in self.versions(ref) if ref.version is None or v <= ref.version]
        if not versions:
            raise ValueError(f"{ref_text}: the tier has no published version")
        return self.load(ref, versions[-1])[0]

    def publish(self, ref: TierRef, delta: TierDelta, rank: int, targets: list[str], base: str | None,
                meta: dict[str, Any], distilled: dict[str, str] | None = None) -> dict[str, Any]:
        self._n += 1
        out = save_adapter(delta, self.tmp / f"out{self._n}", r=rank, target_modules=targets,
                           base_model_name_or_path=base)
        if distilled is not None:
            write_distilled(out, distilled)
        stats = tier_statistics(out)
        (out / STATS_FILE).write_text(__import__("json").dumps({**stats, **meta}, indent=2, sort_keys=True))
        files = {p.name: p for p in out.iterdir() if p.is_file()}
        got = self.store(ref).publish(ref.namespace, ref.tier, files, {**meta, "deltaNorm": stats["norm"]},
                                      progress=lambda m: self.log(f"store: {m}"))
        self.log(f"published {got.uri}")
        return {"tier": f"{ref.namespace}/{ref.tier}", "version": got.version, "uri": got.uri,
                "digest": got.digest, "deltaNorm": stats["norm"]}


def _job() -> dict[str, str]:
    """The Job's name (set by the operator), recorded in what it publishes for the audit trail."""
    job = os.environ.get("DYNAMICLORA_JOB")
    return {"job": job} if job else {}


def _ident(v: VersionRef) -> dict[str, Any]:
    return {"uri": v.uri, "digest": v.digest}


def _resume_point(io: _Io, dest: TierRef, inputs: list[dict[str, Any]],
                  source: TierRef | None = None) -> tuple[int | None, bool]:  # fmt: skip
    """(destination version to start from, whether the destination output is already published).

    The start skips orphans: destination versions of a migration out of ``source`` whose residual was
    never published (the Job died in between and was not retried). Serving never composes them, and a
    migration built on one would carry its components twice once the orphan's source still holds them.
    """
    versions = io.versions(dest)
    if not versions:
        return None, False
    latest = io.store(dest).get(dest.namespace, dest.tier, versions[-1])
    md = latest.manifest.metadata
    if md.get("derivedFrom") == inputs and md.get("destBase", "none") != "none":
        base = md["destBase"]
        return (int(base) if base is not None else None), True
    for v in reversed(versions):
        if source is None or not _orphan(io, io.store(dest).get(dest.namespace, dest.tier, v).manifest.metadata,
                                         source):
            return v, False
        io.log(f"{dest} v{v} is a migration whose residual was never published: not built upon")
    return None, False


def _orphan(io: _Io, md: dict[str, Any], source: TierRef) -> bool:
    """A migration destination version derived from ``source`` whose residual ``source`` never received."""
    derived = md.get("derivedFrom")
    if md.get("kind") != "migration" or not isinstance(derived, list) or len(derived) != 1:
        return False
    tail = f"/{source.namespace}/{source.tier}/v"
    uri = str(derived[0].get("uri", "")) if isinstance(derived[0], dict) else ""
    if tail not in uri:
        return False
    origin = int(uri.rsplit("/v", 1)[-1]) if uri.rsplit("/v", 1)[-1].isdigit() else 0
    for v in io.versions(source):
        if v > origin:
            other = io.store(source).get(source.namespace, source.tier, v).manifest.metadata
            if other.get("kind") == "migration-source" and other.get("derivedFrom") == derived:
                return False
    return True


def run_consolidation(cfg: ConsolidateConfig, log: Log = _print) -> dict[str, Any]:
    """Run one migration or consensus step and return the result (see docs/training.md)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dynamiclora-consolidate-") as tmp:
        io = _Io(Path(tmp), log)
        result = _migrate(cfg, io) if cfg.mode == "migrate" else _consensus(cfg, io)
    result["durationSeconds"] = round(time.monotonic() - started, 3)
    return result


# How far back a retry looks for its own last write: versions published on that tier since (training, a
# later migration) are few, since the operator starts no other consolidation of the tier meanwhile.
_OWN_WRITE_LOOKBACK = 16


def _published_by_this_job(io: _Io, last: TierRef, kind: str) -> dict[str, Any] | None:
    """The manifest metadata of ``kind`` this very Job (``DYNAMICLORA_JOB``) published on ``last`` (its last
    write), or None. A pod killed after publishing everything is retried by the Job controller; the retry
    must report that publication, not consolidate a second time from the versions it produced."""
    job = _job().get("job")
    if not job:
        return None
    for v in reversed(io.versions(last)[-_OWN_WRITE_LOOKBACK:]):
        md = io.store(last).get(last.namespace, last.tier, v).manifest.metadata
        if md.get("kind") == kind and md.get("job") == job:
            io.log(f"Job {job} already published this step ({last} v{v}): publishing nothing")
            return dict(md)
    return None


def _migrate(cfg: ConsolidateConfig, io: _Io) -> dict[str, Any]:
    assert cfg.source is not None  # checked by ConsolidateConfig
    src, dest = parse_tier_ref(cfg.source), parse_tier_ref(cfg.dest)
    done = None if cfg.dry_run else _published_by_this_job(io, src, "migration-source")
    if done is not None:
        report = done.get("report") or {"migrated": done.get("migrated", 0), "bypassed": done.get("bypassed", 0)}
        return {"mode": "migrate", "report": report, "published": [], "changed": True, "alreadyPublished": True,
                **({"gate": done["gate"]} if "gate" in done else {})}
    stability = StabilityConfig(method=cfg.method, threshold=cfg.threshold,  # type: ignore[arg-type]
                                min_consecutive=cfg.min_consecutive, window_length=cfg.window_length,
                                min_energy_fraction=cfg.min_energy_fraction)
    versions = io.versions(src)
    if src.version is not None:
        versions = [v for v in versions if v <= src.version]
    if not versions:
        raise ValueError(f"--source {cfg.source}: the tier has no published version")
    if stability.method == "recurrence":
        return _migrate_recurrence(cfg, io, src, dest, versions)
    window_n = cfg.window or stability.versions_needed()
    loaded = [io.load(src, v) for v in versions[-window_n:]]
    window = [d for d, _, _ in loaded]
    source, src_meta, src_ref = loaded[-1]
    inputs = [_ident(src_ref)]
    base_version, dest_done = _resume_point(io, dest, inputs, src)
    dest_delta: TierDelta = {}
    dest_targets: list[str] = []
    dest_rank = cfg.dest_rank or src_meta.r
    if base_version is not None:
        dest_delta, dest_meta, _ = io.load(dest, base_version)
        dest_rank = cfg.dest_rank or dest_meta.r
        dest_targets = list(dest_meta.target_modules)
    policy = MigrationPolicy(
        stability=stability, max_migrations=cfg.max_migrations, max_energy_fraction=cfg.max_energy_fraction,
        emergency_bypass=cfg.emergency_bypass, bypass_min_stability=cfg.bypass_min_stability,
        dest_rank=dest_rank, dry_run=cfg.dry_run,
    )
    new_src, new_dest, report = migrate(window, source, dest_delta, policy)
    summary = report.to_dict()
    io.log(f"migration {src} -> {dest}: {summary['migrated']} migrated, {summary['bypassed']} bypassed, "
           f"{summary['throttled']} throttled, moved energy {report.moved_energy_fraction:.3f}")
    result: dict[str, Any] = {"mode": "migrate", "window": [v.version for _, _, v in loaded],
                              "report": summary, "published": []}
    moved = report.count(Decision.MIGRATED) + report.count(Decision.BYPASSED)
    if cfg.dry_run or not moved:
        result["changed"] = False
        return result
    if _rejected(cfg, io, result, {f"{src.namespace}/{src.tier}": ([dest_delta, source], [new_dest, new_src])}):
        return result
    base = cfg.base_model or src_meta.base_model_name_or_path
    meta = {"kind": "migration", "derivedFrom": inputs, "destBase": base_version,
            "migrated": report.count(Decision.MIGRATED), "bypassed": report.count(Decision.BYPASSED),
            "truncationError": report.truncation_error, **({"gate": result["gate"]} if "gate" in result else {}),
            "report": {k: summary[k] for k in ("migrated", "bypassed", "throttled", "movedEnergyFraction")
                       if k in summary},
            **_job()}
    if dest_done:
        io.log(f"{dest} already holds this migration; publishing the source only")
    else:
        targets = sorted(set(dest_targets) | set(src_meta.target_modules))
        result["published"].append(io.publish(dest, new_dest, dest_rank, targets, base, meta))
    result["published"].append(
        io.publish(src, new_src, src_meta.r, list(src_meta.target_modules), base,
                   {**meta, "kind": "migration-source", "destBase": "n/a"}))
    result["changed"] = True
    return result


def _migrate_recurrence(cfg: ConsolidateConfig, io: _Io, src: TierRef, dest: TierRef,
                        versions: list[int]) -> dict[str, Any]:  # fmt: skip
    """Migration by recurrence (training/distill.py): the destination learns the stable answers."""
    source, src_meta, src_ref = io.load(src, versions[-1])
    inputs = [_ident(src_ref)]
    base_version, dest_done = _resume_point(io, dest, inputs, src)
    dest_delta: TierDelta = {}
    dest_tier = TierTraining(dest.namespace, dest.tier, None, None, cfg.dest_rank or src_meta.r,
                             list(src_meta.target_modules))  # fmt: skip
    if base_version is not None:
        dest_delta, dest_meta, got = io.load(dest, base_version)
        ref = str(TierRef(dest.store_uri, dest.namespace, dest.tier, base_version))
        dest_tier = TierTraining(dest.namespace, dest.tier, io.dirs[got.uri], ref, dest_meta.r,
                                 list(dest_meta.target_modules))  # fmt: skip
    records, newest = taught_records(cfg)
    spans = training_spans(io.store(src), src, versions, cfg.window or cfg.min_consecutive)
    chosen, stable = decide(cfg, records, newest, spans, read_distilled(dest_tier.init))
    report = {"migrated": len(chosen.moved), "rewritten": len(chosen.rewritten), "bypassed": 0,
              "throttled": len(chosen.throttled), "stable": stable, "rounds": len(spans),
              "held": len(chosen.targets), "movedEnergyFraction": 0.0}  # fmt: skip
    io.log(f"migration {src} -> {dest} by recurrence over {len(spans)} training round(s): {stable} stable "
           f"answer(s), {report['migrated']} move up, {report['rewritten']} rewritten, {report['throttled']} "
           f"throttled; the destination holds {report['held']}")
    result: dict[str, Any] = {"mode": "migrate", "window": [versions[-1]], "report": report, "published": []}
    if cfg.dry_run or not chosen.changes:
        result["changed"] = False
        return result
    # The destination learns the stable answers alone; then the source re-learns its newest questions on top
    # of it, so the served stack answers as before while the destination now holds the stable part.
    assert cfg.model_dir is not None  # checked by ConsolidateConfig
    run = AnchoredRun(cfg.model_dir, dest_tier, list(cfg.frozen), distill_set(records, chosen.targets),
                      [*anchor_set(records, chosen.targets), *steady_records(cfg)], cfg.distill_steps or DEFAULT_STEPS,
                      cfg.distill_lr or DEFAULT_LR, cfg.distill_batch_size or DEFAULT_BATCH,
                      threads=cfg.threads)  # fmt: skip
    new_dest, dest_dir = train_anchored(run, io.tmp / "distill-dest", io.log)
    src_tier = TierTraining(src.namespace, src.tier, io.dirs[src_ref.uri], src_ref.uri, src_meta.r,
                            list(src_meta.target_modules))  # fmt: skip
    beneath = [*cfg.frozen, stash(dest_dir, dest_tier, io.tmp)]
    new_src, _ = train_tier(cfg, src_tier, refit_set(records), beneath, io.tmp / "distill-source", io.log)
    report["steps"] = 2 * run.steps  # the destination's distillation and the source's refit
    if _rejected(cfg, io, result, {f"{src.namespace}/{src.tier}": ([dest_delta, source], [new_dest, new_src])}):
        return result
    base = cfg.base_model or src_meta.base_model_name_or_path
    meta = {"kind": "migration", "method": "recurrence", "derivedFrom": inputs, "destBase": base_version,
            "migrated": report["migrated"], "bypassed": 0, "report": report,
            **({"gate": result["gate"]} if "gate" in result else {}), **_job()}  # fmt: skip
    if dest_done:
        io.log(f"{dest} already holds this migration; publishing the source only")
    else:
        result["published"].append(io.publish(dest, new_dest, dest_tier.rank, dest_tier.targets, base, meta,
                                              record_of(chosen.targets)))  # fmt: skip
    result["published"].append(io.publish(src, new_src, src_meta.r, list(src_meta.target_modules), base,
                                          {**meta, "kind": "migration-source", "destBase": "n/a"}))
    result["changed"] = True
    return result


def _consensus(cfg: ConsolidateConfig, io: _Io) -> dict[str, Any]:
    dest = parse_tier_ref(cfg.dest)
    agents = [parse_tier_ref(a) for a in cfg.agent_tier]
    last, kind = (agents[-1], "consensus-agent") if cfg.update_agents and agents else (dest, "consensus")
    done = None if cfg.dry_run else _published_by_this_job(io, last, kind)
    if done is not None:
        summary = {"rule": done.get("rule"), "agentWeights": done.get("agentWeights"),
                   "truncationError": done.get("truncationError")}
        return {"mode": "consensus", "report": summary, "published": [], "changed": True, "alreadyPublished": True,
                **({"gate": done["gate"]} if "gate" in done else {})}
    loaded = []
    for a in agents:
        versions = [v for v in io.versions(a) if a.version is None or v <= a.version]
        if not versions:
            raise ValueError(f"--agent-tier {a}: the tier has no published version")
        loaded.append(io.load(a, versions[-1]))
    inputs = [_ident(r) for _, _, r in loaded]
    base_version, dest_done = _resume_point(io, dest, inputs)
    shared: TierDelta = {}
    shared_targets: list[str] = []
    rank = cfg.dest_rank or max(m.r for _, m, _ in loaded)
    if base_version is not None:
        shared, shared_meta, _ = io.load(dest, base_version)
        rank = cfg.dest_rank or shared_meta.r
        shared_targets = list(shared_meta.target_modules)
    combined, report = consensus([d for d, _, _ in loaded], cfg.rule, cfg.weights,
                                 ConsensusConfig(rank=rank, outlier_threshold=cfg.outlier_threshold))
    new_shared: TierDelta = {}
    err_sq = report.truncation_error**2
    for module in sorted(set(shared) | set(combined)):
        parts = [t[module] for t in (shared, combined) if module in t]
        cut = truncate(parts[0] if len(parts) == 1 else parts[0] + parts[1], rank)
        new_shared[module] = cut.delta
        err_sq += cut.error**2
    summary = {**report.to_dict(), "agents": [str(a) for a in agents], "truncationError": err_sq**0.5}
    io.log(f"consensus ({cfg.rule}) of {len(agents)} agent tier(s) -> {dest}: agent weights "
           f"{summary['agentWeights']}, outliers left out {summary['excluded']}")
    result: dict[str, Any] = {"mode": "consensus", "report": summary, "published": [], "changed": False}
    if cfg.dry_run:
        return result
    rests: list[TierDelta] = []
    for delta, m, _ in loaded:
        rest = tier_sub(delta, {k: v for k, v in combined.items() if k in delta})
        rests.append({k: truncate(v, m.r).delta for k, v in rest.items()} if cfg.update_agents else delta)
    stacks = {f"{a.namespace}/{a.tier}": ([shared, d], [new_shared, r])
              for a, (d, _, _), r in zip(agents, loaded, rests, strict=True)}
    if _rejected(cfg, io, result, stacks):
        return result
    base = cfg.base_model or loaded[0][1].base_model_name_or_path
    meta = {"kind": "consensus", "rule": cfg.rule, "derivedFrom": inputs, "destBase": base_version,
            "updatesAgents": cfg.update_agents,
            "agentWeights": summary["agentWeights"], "truncationError": summary["truncationError"],
            **({"gate": result["gate"]} if "gate" in result else {}), **_job()}
    if dest_done:
        io.log(f"{dest} already holds this consensus; publishing the agent tiers only")
    else:
        targets = sorted(set(shared_targets).union(*[m.target_modules for _, m, _ in loaded]))
        result["published"].append(io.publish(dest, new_shared, rank, targets, base, meta))
    if cfg.update_agents:
        for a, (_, m, ref), rest in zip(agents, loaded, rests, strict=True):
            result["published"].append(io.publish(
                a, rest, m.r, list(m.target_modules), base,
                {**meta, "kind": "consensus-agent", "destBase": "n/a", "derivedFrom": [_ident(ref)]}))
    result["changed"] = True
    return result


def _rejected(cfg: ConsolidateConfig, io: _Io, result: dict[str, Any],
              stacks: dict[str, tuple[list[TierDelta], list[TierDelta]]]) -> bool:
    """Run the quality gate (when enabled) and record it in ``result``; True when the run must stop."""
    gate = judge(cfg, io.load_latest, stacks)
    if gate is None:
        return False
    result["gate"] = gate
    io.log(f"quality gate: {gate['reason']}")
    if gate["accepted"]:
        result["status"] = "accepted"
        return False
    io.log("quality gate rejected the result: publishing nothing")
    result.update(status="rejected", changed=False)
    return True
