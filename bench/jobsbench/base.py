"""The pretrained tiny base model, interaction records of the fact windows, and served-stack scoring.

Pretraining the base is not a product step (a real deployment starts from a pretrained LLM), so it is
plain full-parameter torch training here, on records tokenized by the product's own
:func:`dynamiclora.training.data.tokenize` so the base learns the answer format the Jobs train on
(answer word, then end of sequence). Scoring uses the product's :func:`dynamiclora.training.gate.score`:
an example is known when greedy decoding reproduces its whole answer, as the quality gate judges it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynamiclora.training.data import Example, collate, tokenize
from dynamiclora.training.gate import score
from dynamiclora.training.model import build_stack, load_base, lora_config
from dynamiclora.training.records import InteractionRecord, SourcedRecord
from dynamiclora_dev.tinymodel import TinyModelConfig, build_model, build_tokenizer, save_tiny_model
from jobsbench.facts import HELD_OUT, TEMPLATES, TRAIN_TEMPLATES, Fact, prompt

EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def fact_record(fact: Fact, template: int, agent: str, when: dt.datetime, rid: str) -> dict[str, Any]:
    """One interaction record (the product's JSONL format) teaching ``fact`` in ``template``."""
    return {"agent": agent, "timestamp": when.isoformat().replace("+00:00", "Z"), "id": rid,
            "prompt": prompt(fact, template), "response": fact.answer}


def window_records(facts: Sequence[Fact], window: int, agent: str,
                   templates: Sequence[int] = TRAIN_TEMPLATES) -> list[dict[str, Any]]:  # fmt: skip
    """Records of one window: one per fact and training template, timestamped inside the window's hour."""
    start = EPOCH + dt.timedelta(hours=window)
    out = []
    for i, (f, t) in enumerate((f, t) for f in facts for t in templates):
        out.append(fact_record(f, t, agent, start + dt.timedelta(seconds=i), f"w{window}-{f.entity}-t{t}"))
    return out


def regression_records(facts: Sequence[Fact], agent: str) -> list[dict[str, Any]]:
    """An agent's regression set: ``facts`` the base was pretrained on, each in every template.

    The base knows them in all phrasings, the benchmark's unseen one included, so an update that bends how
    the model reads a phrasing the records never use shows here; the facts are disjoint from the scored ones.
    """
    return [fact_record(f, t, agent, EPOCH, f"reg-{f.entity}-t{t}") for f in facts for t in range(len(TEMPLATES))]


def write_records(directory: Path, name: str, records: Sequence[dict[str, Any]]) -> Path:
    """Write ``records`` as ``directory/name.jsonl`` (what an agent's experience folder holds)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def examples(facts: Sequence[Fact], template: int, tokenizer: Any, agent: str = "bench") -> list[Example]:
    """The facts in one template, tokenized by the product (one example per fact, same order)."""
    recs = [SourcedRecord("eval", i, InteractionRecord.model_validate(
        fact_record(f, template, agent, EPOCH, f"eval-{i}"))) for i, f in enumerate(facts)]
    out = tokenize(recs, tokenizer, 256)
    if len(out) != len(facts):  # pragma: no cover - every fact has a learnable answer token
        raise RuntimeError("a fact lost its answer in tokenization")
    return out


@dataclass(frozen=True)
class PretrainConfig:
    """Full-parameter pretraining of the tiny base on facts disjoint from the benchmark's.

    The benchmark tests every fact in a template it was never trained in, so it measures a base that
    maps an entity to its answer whatever the phrasing, as a pretrained LLM does. The tiny Llama learns
    that only late at a constant learning rate: after 500 steps on 160 entities a LoRA trained on three
    templates answered the fourth for about 0.2 of the facts, whatever the method; from about 5,000 steps
    on 300 entities 0.8-1.0. But a constant 3e-3 never settles (the run memorizes 0.8-0.9 of its own facts,
    then wanders), so where it stops depends on the CPU's float arithmetic: the 5,000-step base was fine on
    one CPU model and poor on another (the gate refused most Jobs of every method). The ``cosine`` schedule
    (warm-up, cosine decay to ``min_lr_fraction``, gradient clipping) converges: it memorizes every fact
    within 1,000 steps, and a LoRA trained on a window answers it in the unseen template at once
    (docs/continual.md). ``constant`` is the schedule of the result files measured before 2026-11-27.
    """

    entities: int = 300
    steps: int = 5000
    batch: int = 64
    lr: float = 3e-3
    seed: int = 0
    schedule: str = "cosine"
    warmup: int = 200
    min_lr_fraction: float = 0.05
    clip: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"PretrainConfig.schedule must be cosine or constant, got {self.schedule!r}")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        if self.schedule == "constant":
            return self.lr
        warm = min(self.warmup, max(self.steps // 10, 1))
        if step < warm:
            return self.lr * (step + 1) / warm
        cosine = 1 + math.cos(math.pi * (step - warm) / max(self.steps - warm, 1))
        return self.lr * (self.min_lr_fraction + (1 - self.min_lr_fraction) * 0.5 * cosine)


def pretrain_base(path: Path, model_cfg: TinyModelConfig, facts: Sequence[Fact], cfg: PretrainConfig) -> Path:
    """Pretrain a fresh tiny Llama on ``facts`` in every template and save it (Hugging Face format)."""
    tokenizer = build_tokenizer(model_cfg)
    recs = [SourcedRecord("pretrain", i, InteractionRecord.model_validate(r)) for i, r in enumerate(
        fact_record(f, t, "pretrain", EPOCH, f"p{i}-{t}") for i, f in enumerate(facts)
        for t in range(len(TEMPLATES)))]
    data = tokenize(recs, tokenizer, 256)
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    pad = int(tokenizer.pad_token_id)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        idx = torch.randint(len(data), (cfg.batch,), generator=gen).tolist()
        loss = model(**collate([data[i] for i in idx], pad)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.schedule != "constant":
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
    model.eval()
    return save_tiny_model(path, model_cfg, model)


@dataclass(frozen=True)
class AdapterDir:
    """A published tier version downloaded to a directory, with its LoRA shape."""

    path: Path
    rank: int
    alpha: float
    targets: list[str]


def served_stack(base_dir: Path, tiers: Sequence[AdapterDir]) -> tuple[Any, Any]:
    """The stack as served (every tier active), built with the product's :func:`build_stack`.

    The fastest tier is loaded as the stack's target, the others frozen, exactly as a training Job loads
    what it starts from; with no tier at all the bare base model is returned.
    """
    model, tokenizer = load_base(str(base_dir))
    if not tiers:
        return model, tokenizer
    top, rest = tiers[0], tiers[1:]
    cfg = lora_config(top.rank, top.alpha, top.targets, 0.0, str(base_dir))
    stack = build_stack(model, cfg, [(f"tier {t.path}", t.path) for t in rest], top.path)
    stack.eval()
    return stack, tokenizer


def accuracy(model: Any, tokenizer: Any, facts: Sequence[Fact], template: int = HELD_OUT) -> float:
    """Share of ``facts`` the model knows in ``template`` (NaN for no fact)."""
    if not facts:
        return math.nan
    scores = score(model, examples(facts, template, tokenizer), 64, int(tokenizer.pad_token_id))
    return sum(s.correct for s in scores) / len(scores)


def _scores(model: Any, tokenizer: Any, facts: Sequence[Fact], template: int) -> list[Any]:
    return score(model, examples(facts, template, tokenizer), 64, int(tokenizer.pad_token_id))


def answer_nats(model: Any, tokenizer: Any, facts: Sequence[Fact], template: int) -> list[float]:
    """Log-probability (nats) ``model`` gives each fact's whole answer in ``template`` (gate scoring)."""
    return [-s.loss * s.tokens for s in _scores(model, tokenizer, facts, template)]


@dataclass(frozen=True)
class Migrated:
    """Per fact: does the slow tier alone hold it (see :func:`migrated_facts`)."""

    known: list[bool]  # answers it (greedy) and gains min_gain nats over the bare base, each on min_templates
    gained: list[bool]  # gains min_gain nats on min_templates only (the looser reading)


def migrated_facts(slow: Any, base: Any, tokenizer: Any, facts: Sequence[Fact], min_gain: float = 1.0,
                   min_templates: int = 3) -> Migrated:  # fmt: skip
    """Chance-corrected migration. ``known``: the slow tier alone answers the fact (greedy decoding gives its
    answer and end of sequence) on at least ``min_templates`` of the templates, and gains at least ``min_gain``
    nats of log-probability over the bare base on as many: held by the slow tier, not guessed right by
    the base. ``gained``: the gain alone, which also counts an answer that goes from very unlikely to
    merely unlikely (e.g. -15 to -7 nats under a base that is confidently wrong about a new entity) as
    held, although the tier would never give it."""
    per_t = [(_scores(slow, tokenizer, facts, t), _scores(base, tokenizer, facts, t)) for t in range(len(TEMPLATES))]
    gains = [[(-a.loss * a.tokens) - (-b.loss * b.tokens) >= min_gain for a, b in zip(s, b_, strict=True)]
             for s, b_ in per_t]  # fmt: skip
    right = [[a.correct for a in s] for s, _ in per_t]
    gained = [sum(g) >= min_templates for g in zip(*gains, strict=True)]
    answered = [sum(r) >= min_templates for r in zip(*right, strict=True)]
    return Migrated([a and g for a, g in zip(answered, gained, strict=True)], gained)
