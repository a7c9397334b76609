"""Orchestration of the continual-learning benchmark: configurations, seeds, JSON and the docs table."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dynamiclora.tinymodel import TinyModelConfig

from .data import TEMPLATES, DataConfig, Encoder, WordPool, answer_words, build_sequence, pretrain_facts, split_entities
from .lora import pretrain
from .methods import METHODS, Bench, MemoryConfig, MethodResult, TrainConfig, run_dynamiclora, run_joint, run_sequential
from .metrics import average_accuracy, backward_transfer, forgetting, interval
from .multiagent import AgentsConfig, run_agents

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class RunConfig:
    """A whole benchmark run."""

    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5], metadata={"help": "benchmark seeds"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "task windows"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "shared budget"})
    memory: MemoryConfig = field(default_factory=MemoryConfig, metadata={"help": "DynamicLoRA mechanics"})
    agents: AgentsConfig = field(default_factory=AgentsConfig, metadata={"help": "multi-agent part"})
    pretrain_entities: int = field(default=160, metadata={"help": "entities of the pretraining facts"})
    pretrain_steps: int = field(default=500, metadata={"help": "full-parameter pretraining steps"})
    pretrain_batch: int = field(default=64, metadata={"help": "pretraining batch size"})
    pretrain_lr: float = field(default=3e-3, metadata={"help": "pretraining Adam learning rate"})
    methods: tuple[str, ...] = field(default=METHODS, metadata={"help": "methods to run"})

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("RunConfig.seeds must not be empty")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"RunConfig.methods: unknown {unknown}; known: {list(METHODS)}")
        if self.pretrain_steps < 1 or self.pretrain_batch < 1 or self.pretrain_lr <= 0:
            raise ValueError("RunConfig: pretrain_steps and pretrain_batch must be >= 1, pretrain_lr > 0")


QUICK_SEEDS = [1, 2, 3, 4, 5, 6]
"""Seeds of the quick (CI) run: enough paired seeds that its claims hold with margin on any CPU."""


def quick_config(seeds: list[int] | None = None) -> RunConfig:
    """The CI configuration: 4 windows, fewer steps, 6 paired seeds (about 3-4 minutes on 2 CPU cores)."""
    return RunConfig(
        seeds=seeds or QUICK_SEEDS, data=DataConfig(windows=4), train=TrainConfig(steps_per_window=30),
        agents=AgentsConfig(steps=30), pretrain_steps=300,
    )


def _run_method(bench: Bench, name: str, cfg: RunConfig) -> MethodResult:
    if name == "dynamiclora":
        return run_dynamiclora(bench, cfg.train, cfg.memory)
    if name == "joint":
        return run_joint(bench, cfg.train)
    return run_sequential(bench, cfg.train, name)


def run(cfg: RunConfig, log: Log = _print) -> dict[str, Any]:
    """Pretrain the base once, then every seed: all methods and the multi-agent part; aggregate."""
    t0 = time.perf_counter()
    model_cfg = TinyModelConfig()
    enc = Encoder(model_cfg)
    answers = answer_words(model_cfg, cfg.data.answers)
    pre_entities, bench_entities = split_entities(model_cfg, cfg.data.answers, cfg.pretrain_entities)
    pre = enc.encode(pretrain_facts(pre_entities, answers), list(range(len(TEMPLATES))))
    base = pretrain(model_cfg, pre, cfg.pretrain_steps, cfg.pretrain_batch, cfg.pretrain_lr, 0, enc.pad)
    log(f"pretrained base in {time.perf_counter() - t0:.0f}s")
    per_seed: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        ts = time.perf_counter()
        rng = random.Random(seed)
        pool = WordPool(bench_entities, rng)
        bench = Bench(base, enc, build_sequence(cfg.data, model_cfg, pool, rng), seed)
        entry: dict[str, Any] = {"seed": seed, "methods": {}}
        for name in cfg.methods:
            torch.manual_seed(seed)
            res = _run_method(bench, name, cfg)
            entry["methods"][name] = {
                "acc": average_accuracy(res.R), "bwt": backward_transfer(res.R), "forgetting": forgetting(res.R),
                "R": res.R, "final_by_kind": res.final_by_kind,
            }
            if res.migration is not None:
                entry["migration"] = res.migration
            m = entry["methods"][name]
            log(f"seed {seed} {name:12s} acc={m['acc']:.3f} bwt={m['bwt']:+.3f} forgetting={m['forgetting']:.3f}")
        entry["multi_agent"] = run_agents(base, enc, answers, pool, rng, seed, cfg.agents, cfg.train)
        log(f"seed {seed} multi-agent {json.dumps(entry['multi_agent'], default=float)}")
        log(f"seed {seed} done in {time.perf_counter() - ts:.0f}s")
        per_seed.append(entry)
    result = aggregate(per_seed, cfg)
    result["meta"] = {
        "seconds": time.perf_counter() - t0, "seeds": cfg.seeds, "config": asdict(cfg),
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "platform": platform.platform(),
        "load_average_end": os.getloadavg(),
    }
    result["per_seed"] = per_seed
    return result


def aggregate(per_seed: list[dict[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    """Mean and 95% interval over seeds, one key per method plus migration and multi_agent."""
    out: dict[str, Any] = {}
    for name in cfg.methods:
        out[name] = {k: interval([s["methods"][name][k] for s in per_seed]) for k in ("acc", "bwt", "forgetting")}
    if "dynamiclora" in cfg.methods:
        mig = [s["migration"] for s in per_seed]
        out["migration"] = {k: interval([m[k] for m in mig]) for k in ("precision", "recall")}
        kinds = sorted({k for m in mig for k in m["rate_by_kind"]})
        out["migration"]["rate_by_kind"] = {k: interval([m["rate_by_kind"].get(k, math.nan) for m in mig])
                                            for k in kinds}
        out["migration"]["base_known_rate"] = interval([m["base_known_rate"] for m in mig])
    rules = [r for r in per_seed[0]["multi_agent"] if not r.startswith("_")]
    out["multi_agent"] = {
        r: {k: interval([s["multi_agent"][r][k] for s in per_seed]) for k in per_seed[0]["multi_agent"][r]}
        for r in rules
    }
    out["multi_agent"]["chance"] = {k: interval([s["multi_agent"]["_chance"][k] for s in per_seed])
                                    for k in per_seed[0]["multi_agent"]["_chance"]}
    return out


def _fmt(iv: dict[str, float], signed: bool = False) -> str:
    mean, ci = iv["mean"], iv["ci95"]
    m = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return m if math.isnan(ci) else f"{m} ± {ci:.3f}"


def markdown_table(result: dict[str, Any], command: str) -> str:
    """The results tables (mean ± 95% interval over seeds) for docs/benchmarks.md."""
    meta = result["meta"]
    lines = [
        f"Reproduce: `{command}` ({len(meta['seeds'])} seeds, {meta['seconds'] / 60:.1f} min on "
        f"{meta['cpus']} shared CPU cores, load average at the end {meta['load_average_end'][0]:.1f}).",
        "",
        "| method | accuracy | BWT | forgetting |",
        "|---|---|---|---|",
    ]
    for name in METHODS:
        if name in result:
            r = result[name]
            lines.append(f"| `{name}` | {_fmt(r['acc'])} | {_fmt(r['bwt'], True)} | {_fmt(r['forgetting'])} |")
    if "migration" in result:
        mig = result["migration"]
        kinds = ", ".join(f"{k} {_fmt(v)}" for k, v in mig["rate_by_kind"].items())
        lines += ["", f"Migration (DynamicLoRA): precision {_fmt(mig['precision'])}, recall {_fmt(mig['recall'])}; "
                  f"share of facts the slow tier alone knows, by kind: {kinds} "
                  f"(bare base: {_fmt(mig['base_known_rate'])})."]
    lines += ["", "| consensus rule | shared-fact accuracy | private leakage | adversary shift |", "|---|---|---|---|"]
    for rule, r in result["multi_agent"].items():
        if rule != "chance":
            lines.append(f"| `{rule}` | {_fmt(r['shared_acc'])} | {_fmt(r['private_leakage'])} | "
                         f"{_fmt(r['adversary_shift'])} |")
    ch = result["multi_agent"]["chance"]
    lines += ["", f"Bare base model (chance level): shared {_fmt(ch['shared_acc_base'])}, "
              f"private {_fmt(ch['private_leakage_base'])}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI of ``bench/continual.py``."""
    ap = argparse.ArgumentParser(description="Continual-learning benchmark of the DynamicLoRA tier stack")
    ap.add_argument("--quick", action="store_true", help="CI configuration (4 windows, 6 seeds, fewer steps)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (1..N); default 5, quick 6")
    ap.add_argument("--out", type=Path, default=Path("bench/results/continual.json"), help="JSON output")
    ap.add_argument("--table", type=Path, default=None, help="also write the markdown table to this file")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this tiny model)")
    args = ap.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        ap.error("--seeds must be >= 1")
    torch.set_num_threads(args.threads)
    seeds = list(range(1, args.seeds + 1)) if args.seeds else None
    cfg = quick_config(seeds) if args.quick else (RunConfig(seeds=seeds) if seeds else RunConfig())
    result = run(cfg)
    command = "python bench/continual.py" + (" --quick" if args.quick else "") + (
        f" --seeds {args.seeds}" if args.seeds else "")
    table = markdown_table(result, command)
    result["markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float, allow_nan=True) + "\n")
    if args.table is not None:
        args.table.write_text(table + "\n")
    print(table)
    print(f"wrote {args.out}")
    return 0
