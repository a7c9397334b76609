"""Seeds, aggregation (mean and 95% interval, paired differences), the JSON result and the docs table."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dynamiclora_dev.tinymodel import TinyModelConfig
from jobsbench.base import PretrainConfig, pretrain_base
from jobsbench.countries import CountryFacts
from jobsbench.facts import DataConfig, Fact, FactSource, SyntheticFacts, WordPool, build_sequence, entities_needed
from jobsbench.methods import EXTRA_METHODS, METHODS, JobsConfig, run_method
from jobsbench.metrics import interval

Log = Callable[[str], None]
SCALARS = ("acc", "bwt", "forgetting", "flip_new_when_taught", "flip_stale_final", "migration_precision",
           "migration_recall", "migration_precision_gain_only", "migration_recall_gain_only", "optimizer_steps",
           "base_kept")
KINDS = ("recurring", "transient", "flipped")
FACT_SOURCES: dict[str, type[FactSource]] = {"synthetic": SyntheticFacts, "countries": CountryFacts}
"""``--facts``: pseudo-word colors (the default) or real country -> capital facts (docs/continual.md)."""


def _print(msg: str) -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class RunConfig:
    """A whole run: seeds, data shape, the shared Job settings and the base's pretraining."""

    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    data: DataConfig = field(default_factory=DataConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    methods: tuple[str, ...] = METHODS
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    facts: str = "synthetic"

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("RunConfig.seeds must not be empty")
        if self.facts not in FACT_SOURCES:
            raise ValueError(f"unknown facts {self.facts!r}; known: {sorted(FACT_SOURCES)}")
        missing = sorted(set(FACT_SOURCES[self.facts].words()) - set(self.model.extra_words))
        if missing:
            raise ValueError(f"the model's extra_words lack {len(missing)} words of the {self.facts} facts, "
                             f"e.g. {missing[:3]}; use model_config()")
        unknown = sorted(set(self.methods) - {*METHODS, *EXTRA_METHODS})
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {[*METHODS, *EXTRA_METHODS]}")


def model_config(facts: str, vocab_words: int) -> TinyModelConfig:
    """The tiny model for ``facts``: ``vocab_words`` pseudo-words plus the words the facts are made of."""
    return TinyModelConfig(vocab_words=vocab_words, extra_words=FACT_SOURCES[facts].words())


def fact_source(cfg: RunConfig) -> FactSource:
    """The run's facts (see ``FACT_SOURCES``)."""
    return FACT_SOURCES[cfg.facts](cfg.model, cfg.data)


def quick_config(seeds: list[int] | None = None, windows: int = 3) -> RunConfig:
    """A small configuration for tests and smoke runs (fewer steps, windows and pretraining steps)."""
    return RunConfig(seeds=seeds or [1], data=DataConfig(windows=windows),
                     jobs=JobsConfig(steps=60), pretrain=PretrainConfig(steps=200))  # fmt: skip


def _base(root: Path, model_cfg: TinyModelConfig, facts: list[Fact], cfg: PretrainConfig) -> Path:
    """The pretrained base; with ``JOBSBENCH_BASE_CACHE`` set, kept there per configuration (the pretraining
    is deterministic, so a cached base is the one this run would train)."""
    cache = os.environ.get("JOBSBENCH_BASE_CACHE")
    if not cache:
        return pretrain_base(root / "base", model_cfg, facts, cfg)
    key = hashlib.sha256(json.dumps([_key(asdict(model_cfg), "extra_words", ()), asdict(cfg),
                                     [_key(asdict(f), "relation", "color") for f in facts]],
                                    sort_keys=True).encode()).hexdigest()[:16]  # fmt: skip
    path = Path(cache) / key
    if not (path / "config.json").is_file():
        pretrain_base(root / "base", model_cfg, facts, cfg)
        shutil.copytree(root / "base", path, dirs_exist_ok=True)
    return path


def _key(fields: dict[str, Any], name: str, default: Any) -> dict[str, Any]:
    """``fields`` without ``name`` when it has its default: bases cached before the field existed keep their key."""
    return {k: v for k, v in fields.items() if k != name or v != default}


def run(cfg: RunConfig, log: Log = _print, workdir: Path | None = None) -> dict[str, Any]:
    """Pretrain the base once, then for every seed run every method on the same windows; aggregate."""
    t0 = time.perf_counter()
    model_cfg = cfg.model
    source = fact_source(cfg)
    pre_facts, bench_entities = source.split(cfg.pretrain.entities)
    root = Path(tempfile.mkdtemp(prefix="jobsbench-", dir=workdir))
    try:
        base = _base(root, model_cfg, pre_facts, cfg.pretrain)
        log(f"pretrained the base in {time.perf_counter() - t0:.0f}s")
        per_seed: list[dict[str, Any]] = []
        for seed in cfg.seeds:
            ts = time.perf_counter()
            rng = random.Random(seed)
            seq = build_sequence(cfg.data, source, WordPool(bench_entities, rng), rng)
            entry: dict[str, Any] = {"seed": seed, "methods": {}}
            for name in cfg.methods:
                tm = time.perf_counter()
                res = run_method(name, seq, base, cfg.jobs, root / f"seed{seed}" / name, log, pre_facts)
                res["seconds"] = round(time.perf_counter() - tm, 1)
                entry["methods"][name] = res
                log(f"seed {seed} {name:12s} acc={res['acc']:.3f} bwt={res['bwt']:+.3f} "
                    f"by kind {({k: round(v, 3) for k, v in res['final_by_kind'].items()})} "
                    f"rejected {res['rejected_training_jobs']}/{res['training_jobs']} ({res['seconds']:.0f}s)")
            entry["seconds"] = round(time.perf_counter() - ts, 1)
            per_seed.append(entry)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = aggregate(per_seed, cfg.methods)
    result["meta"] = {
        "seconds": round(time.perf_counter() - t0, 1), "seeds": cfg.seeds, "config": asdict(cfg),
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "platform": platform.platform(),
        "load_average_end": os.getloadavg(),
        "driven": "dynamiclora.controllers.tier.reconcile_tier and controllers.policy.reconcile_policy on an "
                  "in-memory Kubernetes API; their Jobs run in-process through `dynamiclora train` / "
                  "`dynamiclora consolidate` (dynamiclora.cli parser and handlers) on a file:// store",
    }
    result["per_seed"] = per_seed
    return result


def _values(per_seed: list[dict[str, Any]], name: str, key: str) -> list[float]:
    out = []
    for s in per_seed:
        m = s["methods"][name]
        out.append(float(m["final_by_kind"].get(key, float("nan")) if key in KINDS else m[key]))
    return out


def aggregate(per_seed: list[dict[str, Any]], methods: tuple[str, ...]) -> dict[str, Any]:
    """Mean and 95% interval per method and metric, and paired differences of DynamicLoRA to each peer."""
    keys = (*SCALARS, *KINDS)
    out: dict[str, Any] = {"methods": {n: {k: interval(_values(per_seed, n, k)) for k in keys} for n in methods}}
    diffs: dict[str, Any] = {}
    if "dynamiclora" in methods:
        for peer in (m for m in methods if m != "dynamiclora"):
            diffs[f"dynamiclora-{peer}"] = {
                k: interval([a - b for a, b in zip(_values(per_seed, "dynamiclora", k), _values(per_seed, peer, k),
                                                   strict=True)])
                for k in keys
            }
    out["paired_differences"] = diffs
    return out


def _fmt(iv: dict[str, float], signed: bool = False) -> str:
    mean, ci = iv["mean"], iv["ci95"]
    m = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return m if ci != ci else f"{m} ± {ci:.3f}"  # ci != ci: NaN (one seed)


def markdown_table(result: dict[str, Any], command: str) -> str:
    """Results (mean ± 95% interval over seeds) as markdown for docs/benchmarks-jobs.md."""
    meta = result["meta"]
    lines = [
        f"Reproduce: `{command}` ({len(meta['seeds'])} seeds, {meta['seconds'] / 60:.1f} min on {meta['cpus']} "
        f"shared CPU cores).", "",
        "| method | ACC | BWT | forgetting | recurring | transient | flipped (new answer) | stale flip answer "
        "| base facts kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["methods"].items():
        lines.append(f"| `{name}` | {_fmt(r['acc'])} | {_fmt(r['bwt'], True)} | {_fmt(r['forgetting'])} | "
                     f"{_fmt(r['recurring'])} | {_fmt(r['transient'])} | {_fmt(r['flipped'])} | "
                     f"{_fmt(r['flip_stale_final'])} | {_fmt(r['base_kept'])} |")
    migrating = [(n, r) for n, r in result["methods"].items() if r["migration_recall"]["n"]]
    if migrating:
        lines += ["", "| method | migration precision | migration recall | precision (gain only) "
                      "| recall (gain only) |", "|---|---|---|---|---|"]
        lines += [f"| `{n}` | {_fmt(r['migration_precision'])} | {_fmt(r['migration_recall'])} | "
                  f"{_fmt(r['migration_precision_gain_only'])} | {_fmt(r['migration_recall_gain_only'])} |"
                  for n, r in migrating]
    if result["paired_differences"]:
        lines += ["", "| paired difference | ACC | BWT | recurring | transient | flipped |",
                  "|---|---|---|---|---|---|"]
        for pair, d in result["paired_differences"].items():
            lines.append(f"| `{pair}` | {_fmt(d['acc'], True)} | {_fmt(d['bwt'], True)} | "
                         f"{_fmt(d['recurring'], True)} | {_fmt(d['transient'], True)} | {_fmt(d['flipped'], True)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI of ``bench/jobs_continual.py``."""
    ap = argparse.ArgumentParser(description="Continual learning through the product's Jobs and reconcilers")
    ap.add_argument("--quick", action="store_true", help="small configuration (fewer steps, 3 windows)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds 1..N (default 3; quick 1)")
    ap.add_argument("--first-seed", type=int, default=1,
                    help="first seed (e.g. 101 for the tuning seeds, kept apart from the reported 1..5)")
    ap.add_argument("--windows", type=int, default=None, help="task windows (default 5; quick 3)")
    ap.add_argument("--no-gate", action="store_true", help="disable the quality gate of every tier")
    ap.add_argument("--window-shape", default=None, metavar="TRANSIENT,GROUP,FLIPS",
                    help="facts per window: transient ones, recurring group size, flips (default 10,6,3); "
                         "smaller windows let ten of them fit the default vocabulary")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated subset of {','.join((*METHODS, *EXTRA_METHODS))}")
    ap.add_argument("--ewc-lambda", type=float, default=None, help="the ewc method's strength (tuning)")
    ap.add_argument("--anchor-facts", type=int, default=0, metavar="N",
                    help="give the agent an anchor set: N more of the base's pretraining facts in every template")
    ap.add_argument("--anchor-weight", type=float, default=1.0, help="training.anchorWeight with --anchor-facts")
    ap.add_argument("--regression-facts", type=int, default=0, metavar="N",
                    help="give the agent a regression set: N of the base's pretraining facts in every template")
    ap.add_argument("--facts", choices=sorted(FACT_SOURCES), default="synthetic",
                    help="pseudo-word colors (default) or real country -> capital facts from the countryinfo package")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON output (default bench/results/continual_jobs.json; continual_jobs_FACTS.json "
                         "for other facts)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the bench process")
    ap.add_argument("--pretrain-steps", type=int, default=None,
                    help=f"full-parameter pretraining steps of the base (default {PretrainConfig().steps})")
    ap.add_argument("--pretrain-schedule", choices=("cosine", "constant"), default=None,
                    help="the base's learning-rate schedule (default cosine; constant: result files before "
                         "2026-11-27)")
    args = ap.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        ap.error("--seeds must be >= 1")
    torch.set_num_threads(args.threads)
    seeds = list(range(args.first_seed, args.first_seed + (args.seeds or (1 if args.quick else 3))))
    windows = args.windows or (3 if args.quick else 5)
    shape: dict[str, int] = {}
    if args.window_shape:
        transient, group, flips = (int(x) for x in args.window_shape.split(","))
        shape = {"transient_per_window": transient, "recurring_group": group, "flip_per_window": flips}
    data = DataConfig(windows=windows, **shape)
    cfg = quick_config(seeds, windows) if args.quick else RunConfig(seeds=seeds, data=data)
    jobs = JobsConfig(**{**asdict(cfg.jobs), "gate": False}) if args.no_gate else cfg.jobs
    if args.ewc_lambda is not None:
        jobs = JobsConfig(**{**asdict(jobs), "ewc_lambda": args.ewc_lambda})
    if args.regression_facts:
        jobs = JobsConfig(**{**asdict(jobs), "regression_facts": args.regression_facts})
    if args.anchor_facts:
        jobs = JobsConfig(**{**asdict(jobs), "anchor_facts": args.anchor_facts, "anchor_weight": args.anchor_weight})
    # A long run draws more entities than the default vocabulary has besides the pretraining ones.
    vocab = max(TinyModelConfig().vocab_words, cfg.data.answers + cfg.pretrain.entities + entities_needed(cfg.data))
    pretrain = replace(cfg.pretrain, steps=args.pretrain_steps) if args.pretrain_steps else cfg.pretrain
    pretrain = replace(pretrain, schedule=args.pretrain_schedule) if args.pretrain_schedule else pretrain
    cfg = RunConfig(seeds=cfg.seeds, data=cfg.data, jobs=jobs, pretrain=pretrain,
                    methods=tuple(m for m in args.methods.split(",") if m),
                    model=model_config(args.facts, vocab), facts=args.facts)  # fmt: skip
    result = run(cfg)
    flags = [f for f, on in (("--quick", args.quick), ("--no-gate", args.no_gate)) if on]
    first = [f"--first-seed {args.first_seed}"] if args.first_seed != 1 else []
    first += [f"--methods {args.methods}"] if args.methods != ",".join(METHODS) else []
    first += [f"--window-shape {args.window_shape}"] if args.window_shape else []
    first += [f"--ewc-lambda {args.ewc_lambda:g}"] if args.ewc_lambda is not None else []
    first += [f"--regression-facts {args.regression_facts}"] if args.regression_facts else []
    first += [f"--anchor-facts {args.anchor_facts} --anchor-weight {args.anchor_weight:g}"] if args.anchor_facts else []
    first += [f"--facts {args.facts}"] if args.facts != "synthetic" else []
    first += [f"--pretrain-steps {args.pretrain_steps}"] if args.pretrain_steps else []
    first += [f"--pretrain-schedule {args.pretrain_schedule}"] if args.pretrain_schedule else []
    command = " ".join(["python bench/jobs_continual.py", *flags, f"--seeds {len(seeds)}", *first,
                        f"--windows {windows}"])
    result["meta"]["command"] = command
    result["markdown"] = markdown_table(result, command)
    suffix = "" if args.facts == "synthetic" else f"_{args.facts}"
    out: Path = args.out or Path(f"bench/results/continual_jobs{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float, allow_nan=True) + "\n")
    print(result["markdown"])
    print(f"wrote {out}")
    return 0
