"""The compared methods, all on the same pretrained base, data, steps and batch size.

* ``dynamiclora``: the tier stack ``slow + recent + fast``; each window trains the fast tier on top
  of the served stack (slower tiers active and frozen) while replaying the stored records the stack
  is most surprised by; after each window the memory core tracks phases, decays FREE components and
  migrates stable components into the slow tier (:func:`dynamiclora.memory.migrate`).
* ``seq_lora``: one adapter trained window after window.
* ``replay``: ``seq_lora`` plus a small reservoir buffer of past examples mixed into every batch.
* ``replay_full``: ``seq_lora`` plus replay from every stored record (newest answer per entity), with
  the same replayed examples per step as ``replay``.
* ``ewc``: ``seq_lora`` plus an online EWC penalty on the adapter weights.
* ``joint``: one adapter trained on all windows at once (upper bound; no sequence, so no forgetting).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dynamiclora import memory as mem

from .data import HELD_OUT, TEMPLATES, TRAIN_TEMPLATES, Encoded, Encoder, Fact, TaskSequence
from .lora import (
    activate,
    correct,
    example_losses,
    get_tier,
    loss_on,
    make_batch,
    set_tier,
    subset,
    tier_params,
    train_steps,
    with_tiers,
)

METHODS = ("dynamiclora", "seq_lora", "replay", "replay_full", "ewc", "joint")


@dataclass(frozen=True)
class TrainConfig:
    """Budget and hyper-parameters shared by the methods (the same for every method)."""

    steps_per_window: int = field(default=40, metadata={"help": "optimizer steps per window"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate of the trained adapter"})
    rank: int = field(default=8, metadata={"help": "rank of the trained adapter (fast tier)"})
    slow_rank: int = field(default=16, metadata={"help": "DynamicLoRA slow-tier rank"})
    replay_buffer: int = field(default=24, metadata={"help": "replay: buffered examples (reservoir)"})
    replay_fraction: float = field(default=0.25, metadata={
        "help": "replay, replay_full and DynamicLoRA: share of each batch replayed from stored examples"})
    ewc_lambda: float = field(default=1.0, metadata={"help": "EWC: penalty weight (Fisher normalised to mean 1)"})
    fisher_batches: int = field(default=6, metadata={"help": "EWC: minibatches for the Fisher estimate"})

    def __post_init__(self) -> None:
        for name in ("steps_per_window", "batch_size", "rank", "slow_rank", "fisher_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ValueError(f"TrainConfig.replay_fraction must be in [0, 1), got {self.replay_fraction}")
        if self.lr <= 0 or self.ewc_lambda < 0 or self.replay_buffer < 0:
            raise ValueError("TrainConfig: lr must be > 0, ewc_lambda and replay_buffer >= 0")


@dataclass(frozen=True)
class MemoryConfig:
    """DynamicLoRA's memory mechanics between windows (see docs/continual.md for the choices)."""

    threshold: float = field(default=0.5, metadata={"help": "stability: subspace score needed"})
    min_consecutive: int = field(default=2, metadata={"help": "stability: consecutive windows above threshold"})
    max_migrations: int = field(default=32, metadata={"help": "components migrated per window (all modules)"})
    max_energy_fraction: float = field(default=1.0, metadata={"help": "share of candidate energy moved per window"})
    candidate_rank: int = field(default=16, metadata={"help": "rank of the consensus-of-versions candidate"})
    fast: str = field(default="fresh", metadata={
        "help": "fast tier per window: 'fresh' (re-initialised, versions = states) or 'continue' (versions = updates)"})
    recent_rank: int = field(default=16, metadata={
        "help": "fresh fast tier only: rank of a frozen 'recent' tier keeping the non-migrated remainder of "
                "past windows (decaying as FREE); served, not active while training; 0 = none"})
    recent_keep: float = field(default=0.3, metadata={"help": "share of the recent tier kept per window"})
    recent_in_training: bool = field(default=True, metadata={
        "help": "recent tier active (frozen) while the fast tier trains, i.e. train on top of the served stack"})
    surprise_pool: int = field(default=96, metadata={
        "help": "replay: stored records (newest answer per entity) with the highest loss under the served "
                "stack, re-chosen every window, sampled for TrainConfig.replay_fraction of each batch; 0 = none"})
    versions: str = field(default="context", metadata={
        "help": "versions judged for migration: 'context' (what a window leaves in the context: the decayed "
                "recent tier plus the fast state; needs the recent tier) or 'fast' (fast-tier states only)"})
    history: str = field(default="reset", metadata={
        "help": "after a migration, older versions: 'residual' (minus what moved), 'reset' (dropped), 'sliding'"})
    phases: mem.PhaseConfig = field(default_factory=mem.PhaseConfig, metadata={"help": "hysteresis and decay"})

    def __post_init__(self) -> None:
        if self.history not in ("residual", "reset", "sliding"):
            raise ValueError(f"MemoryConfig.history must be residual, reset or sliding, got {self.history!r}")
        if self.versions not in ("fast", "context"):
            raise ValueError(f"MemoryConfig.versions must be fast or context, got {self.versions!r}")
        if self.surprise_pool < 0:
            raise ValueError(f"MemoryConfig.surprise_pool must be >= 0, got {self.surprise_pool}")
        if self.fast not in ("fresh", "continue"):
            raise ValueError(f"MemoryConfig.fast must be fresh or continue, got {self.fast!r}")
        if self.candidate_rank < 1:
            raise ValueError(f"MemoryConfig.candidate_rank must be >= 1, got {self.candidate_rank}")
        if self.recent_rank < 0 or not 0.0 <= self.recent_keep <= 1.0:
            raise ValueError(f"MemoryConfig: recent_rank must be >= 0 and recent_keep in [0, 1], got "
                             f"{self.recent_rank}, {self.recent_keep}")
        if not 0.0 < self.threshold <= 1.0 or self.min_consecutive < 1:
            raise ValueError(f"MemoryConfig: threshold must be in (0, 1] and min_consecutive >= 1, got "
                             f"{self.threshold}, {self.min_consecutive}")

    def policy(self, slow_rank: int) -> mem.MigrationPolicy:
        """The migration policy for a slow tier of rank ``slow_rank``."""
        return mem.MigrationPolicy(
            stability=mem.StabilityConfig(method=mem.StabilityMethod.SUBSPACE, threshold=self.threshold,
                                          min_consecutive=self.min_consecutive),
            max_migrations=self.max_migrations, max_energy_fraction=self.max_energy_fraction,
            emergency_bypass=False, dest_rank=slow_rank)


@dataclass
class Bench:
    """One seed's fixed inputs: pretrained base, encoder, data and its encodings."""

    base: Any
    enc: Encoder
    seq: TaskSequence
    seed: int
    candidates: list[int] = field(init=False)
    train_sets: list[Encoded] = field(init=False)
    test_sets: list[Encoded] = field(init=False)

    def __post_init__(self) -> None:
        self.candidates = [self.enc.ids[a] for a in self.seq.answers]
        self.train_sets = [self.enc.encode(w.train, TRAIN_TEMPLATES) for w in self.seq.windows]
        self.test_sets = [self.enc.encode(w.test, [HELD_OUT]) for w in self.seq.windows]

    def accuracy(self, model: Any, facts_or_enc: Encoded | list[Fact]) -> float:
        """Held-out-template accuracy of ``model`` on facts (or on an encoded test set)."""
        enc = facts_or_enc if isinstance(facts_or_enc, Encoded) else self.enc.encode(facts_or_enc, [HELD_OUT])
        hits = correct(model, enc, self.candidates, self.enc.pad)
        return sum(hits) / len(hits) if hits else math.nan

    def row(self, model: Any) -> list[float]:
        """One row of the accuracy matrix: accuracy on every window's test facts."""
        return [self.accuracy(model, t) for t in self.test_sets]

    def stored(self, k: int) -> Encoded:
        """The record store before window ``k``: training records of windows ``< k``, newest answer per
        entity, minus the entities window ``k`` trains (its answer supersedes a stored one)."""
        latest: dict[str, Fact] = {}
        for w in self.seq.windows[:k]:
            for f in w.train:
                latest[f.entity] = f
        for f in self.seq.windows[k].train:
            latest.pop(f.entity, None)
        return self.enc.encode(list(latest.values()), TRAIN_TEMPLATES)

    def known(self, model: Any, facts: list[Fact]) -> list[bool]:
        """Per fact: answered correctly in at least half of all templates."""
        enc = self.enc.encode(facts, list(range(len(TEMPLATES))))
        hits = correct(model, enc, self.candidates, self.enc.pad)
        n = len(TEMPLATES)
        return [sum(hits[i * n:(i + 1) * n]) * 2 >= n for i in range(len(facts))]


@dataclass
class MethodResult:
    """Accuracy matrix (``R[i][j]``: accuracy on window j after training window i) and extras."""

    R: list[list[float]]
    final_by_kind: dict[str, float]
    migration: dict[str, Any] | None = None


def _final_by_kind(bench: Bench, model: Any) -> dict[str, float]:
    latest: dict[str, Fact] = {}
    for w in bench.seq.windows:
        for f in w.test:
            latest[f.entity] = f
    kinds: dict[str, list[Fact]] = {}
    for f in latest.values():
        kinds.setdefault(f.kind, []).append(f)
    return {k: bench.accuracy(model, fs) for k, fs in sorted(kinds.items())}


def run_sequential(bench: Bench, cfg: TrainConfig, variant: str) -> MethodResult:
    """``seq_lora``, ``replay``, ``replay_full`` or ``ewc``: one adapter trained window after window."""
    if variant not in ("seq_lora", "replay", "replay_full", "ewc"):
        raise ValueError(f"unknown sequential variant {variant!r}")
    model = with_tiers(bench.base, {"adapter": cfg.rank}, "adapter", bench.seed)
    params = tier_params(model, "adapter")
    gen = torch.Generator().manual_seed(bench.seed)
    rng = random.Random(bench.seed)
    buffer: list[tuple[list[int], int]] = []
    seen = 0
    fisher = [torch.zeros_like(p) for p in params]
    anchor = [p.detach().clone() for p in params]
    R = []
    for k, data in enumerate(bench.train_sets):
        penalty = None
        if variant == "ewc" and k > 0:
            penalty = _ewc_penalty(params, fisher, anchor, cfg.ewc_lambda)
        replay = Encoded([p for p, _ in buffer], [a for _, a in buffer]) if variant == "replay" and buffer else None
        if variant == "replay_full" and k > 0:
            replay = bench.stored(k)
        train_steps(model, params, data, cfg.steps_per_window, cfg.batch_size, cfg.lr, gen, bench.enc.pad,
                    penalty=penalty, replay=replay, replay_fraction=cfg.replay_fraction)
        if variant == "ewc":
            new = _fisher(model, params, data, cfg, gen, bench.enc.pad)
            fisher = [f + n for f, n in zip(fisher, new, strict=True)]
            anchor = [p.detach().clone() for p in params]
        if variant == "replay":
            for item in zip(data.prompts, data.answers, strict=True):  # reservoir sampling
                seen += 1
                if len(buffer) < cfg.replay_buffer:
                    buffer.append(item)
                elif (j := rng.randrange(seen)) < cfg.replay_buffer:
                    buffer[j] = item
        R.append(bench.row(model))
    return MethodResult(R, _final_by_kind(bench, model))


def _fisher(model: Any, params: list[torch.nn.Parameter], data: Encoded, cfg: TrainConfig,
            gen: torch.Generator, pad: int) -> list[Tensor]:
    """Diagonal empirical Fisher (squared minibatch gradients), normalised to mean 1."""
    acc = [torch.zeros_like(p) for p in params]
    model.eval()
    for _ in range(cfg.fisher_batches):
        idx = torch.randint(len(data.prompts), (cfg.batch_size,), generator=gen).tolist()
        model.zero_grad(set_to_none=True)
        loss_on(model, make_batch(data, idx, pad)).backward()
        for a, p in zip(acc, params, strict=True):
            if p.grad is not None:
                a += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    mean = float(torch.cat([a.flatten() for a in acc]).mean())
    return [a / max(mean, 1e-30) for a in acc]


def _ewc_penalty(params: list[torch.nn.Parameter], fisher: list[Tensor], anchor: list[Tensor],
                 lam: float) -> Callable[[], Tensor]:
    def penalty() -> Tensor:
        total = sum(((f * (p - a) ** 2).sum() for p, f, a in zip(params, fisher, anchor, strict=True)),
                    start=torch.zeros(()))
        return 0.5 * lam * total
    return penalty


def run_joint(bench: Bench, cfg: TrainConfig) -> MethodResult:
    """One adapter on the union of all windows (latest answer per entity), same total steps."""
    latest: dict[str, Fact] = {}
    for w in bench.seq.windows:
        for f in w.train:
            latest[f.entity] = f
    data = bench.enc.encode(list(latest.values()), TRAIN_TEMPLATES)
    model = with_tiers(bench.base, {"adapter": cfg.rank}, "adapter", bench.seed)
    gen = torch.Generator().manual_seed(bench.seed)
    steps = cfg.steps_per_window * len(bench.train_sets)
    train_steps(model, tier_params(model, "adapter"), data, steps, cfg.batch_size, cfg.lr, gen, bench.enc.pad)
    row = bench.row(model)
    return MethodResult([list(row) for _ in bench.train_sets], _final_by_kind(bench, model))


def run_dynamiclora(bench: Bench, cfg: TrainConfig, mcfg: MemoryConfig) -> MethodResult:
    """The tier stack ``slow + recent + fast``; per window: consolidation after training the fast tier.

    Default schedule (``MemoryConfig`` documents the alternatives measured in docs/continual.md):
    the fast (context) tier starts fresh each window and is trained on top of the served stack (slow
    and recent tiers active and frozen), so it learns what the stack still gets wrong instead of being
    added afterwards to tiers it never saw; each batch mixes in stored records of earlier windows that
    the stack is most surprised by (highest loss; newest answer per entity, so a superseded answer is
    never replayed; ``MemoryConfig.surprise_pool`` of them, ``TrainConfig.replay_fraction`` of each
    batch, the ``replay`` baseline's per-step budget). Consolidation (:func:`_consolidate`) migrates
    what the last versions agree on into the slow tier; the remainder moves to the frozen ``recent``
    tier, where it decays (kept share ``recent_keep`` per window, like FREE components).
    """
    ranks = {"slow": cfg.slow_rank, "fast": cfg.rank}
    recent = mcfg.recent_rank > 0 and mcfg.fast == "fresh"
    if recent:
        ranks = {"slow": cfg.slow_rank, "recent": mcfg.recent_rank, "fast": cfg.rank}
    model = with_tiers(bench.base, ranks, "fast", bench.seed)
    served = list(ranks)
    params = tier_params(model, "fast")
    gen = torch.Generator().manual_seed(bench.seed)
    tracker = mem.PhaseTracker(mcfg.phases)
    policy = mcfg.policy(cfg.slow_rank)
    history: list[mem.TierDelta] = []
    R: list[list[float]] = []
    moved: list[int] = []
    for k, data in enumerate(bench.train_sets):
        replay = None
        if k and mcfg.surprise_pool:
            # Surprise = loss under the stack as served now (before the fast tier is reset).
            activate(model, served)
            store = bench.stored(k)
            losses = example_losses(model, store, bench.enc.pad)
            top = sorted(range(len(losses)), key=lambda i: -losses[i])[:mcfg.surprise_pool]
            replay = subset(store, top)
        if mcfg.fast == "fresh":
            # Same initialisation every window: versions differ only by what their window taught.
            set_tier(model, "fast", {}, torch.Generator().manual_seed(bench.seed + 7919))
        before = get_tier(model, "fast")
        activate(model, served if mcfg.recent_in_training else ["slow", "fast"])
        train_steps(model, params, data, cfg.steps_per_window, cfg.batch_size, cfg.lr, gen, bench.enc.pad,
                    replay=replay, replay_fraction=cfg.replay_fraction)
        state = get_tier(model, "fast")
        old_recent = get_tier(model, "recent") if recent else {}
        if recent and mcfg.versions == "context":
            # The context this window leaves behind: the decayed recent tier plus the new fast state.
            version = mem.tier_add([old_recent, state], [mcfg.recent_keep, 1.0])
        else:
            version = state if mcfg.fast == "fresh" else mem.tier_sub(state, before)
        history.append(version)
        fast, slow, n, moved_tier = _consolidate(history, state, get_tier(model, "slow"), tracker, policy, mcfg,
                                                 cfg, interactions=len(data.prompts))
        if recent:
            # The remainder leaves the context tier for the recent tier, where it decays like FREE
            # components and is truncated to the tier's rank (oldest, weakest content goes first).
            if mcfg.versions == "context":
                # What moved came from the context (recent + fast): it leaves it entirely.
                ctx = mem.tier_sub(version, moved_tier)
            else:
                ctx = mem.tier_add([mem.tier_scaled(old_recent, mcfg.recent_keep), fast])
            set_tier(model, "recent", {m: mem.truncate(d, mcfg.recent_rank).delta for m, d in ctx.items()}, gen)
            fast = {}
        set_tier(model, "fast", fast, gen)
        set_tier(model, "slow", slow, gen)
        activate(model, served)
        moved.append(n)
        R.append(bench.row(model))
    facts = bench.seq.should_migrate + bench.seq.should_not_migrate
    activate(model, ["slow"])
    slow_known = bench.known(model, facts)
    with model.disable_adapter():
        base_known = bench.known(model, facts)
    activate(model, served)
    # A fact migrated when the slow tier alone answers it and the bare base model does not.
    migrated = [s and not b for s, b in zip(slow_known, base_known, strict=True)]
    n_pos = len(bench.seq.should_migrate)
    tp, fp = sum(migrated[:n_pos]), sum(migrated[n_pos:])
    by_kind: dict[str, list[bool]] = {}
    for f, m in zip(facts, migrated, strict=True):
        by_kind.setdefault(f.kind, []).append(m)
    migration = {
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / n_pos if n_pos else math.nan,
        "rate_by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
        "base_known_rate": sum(base_known) / len(base_known),
        "components_per_window": moved,
    }
    return MethodResult(R, _final_by_kind(bench, model), migration)


def _consolidate(
    history: list[mem.TierDelta], state: mem.TierDelta, slow: mem.TierDelta, tracker: mem.PhaseTracker,
    policy: mem.MigrationPolicy, mcfg: MemoryConfig, cfg: TrainConfig, interactions: int,
) -> tuple[mem.TierDelta, mem.TierDelta, int, mem.TierDelta]:
    """Migrate what the recent fast-tier versions agree on into the slow tier; decay FREE components.

    Returns ``(new fast tier, new slow tier, components migrated, what moved)``.
    """
    need = policy.stability.versions_needed()
    moved_n = 0
    new_slow = slow
    fast = state
    moved: mem.TierDelta = {}
    if len(history) >= need:
        window = history[-need:]
        # Facts in superposition make single versions' components mixtures; the consensus of the
        # versions keeps what they share (it reinforces) and averages out what they do not.
        candidate, _ = mem.consensus(window, rule=mem.ConsensusRule.RESONANCE,
                                     config=mem.ConsensusConfig(rank=mcfg.candidate_rank))
        rest, new_slow, report = mem.migrate([*window[:-1], candidate], candidate, slow, policy)
        moved_n = report.count(mem.Decision.MIGRATED)
        moved = mem.tier_sub(candidate, rest)
        # Migration moves, it does not copy: the fast tier gives up what went up (kept at its rank).
        fast = {m: mem.truncate(d - moved[m], cfg.rank).delta if m in moved else d for m, d in state.items()}
        if moved_n and mcfg.history == "reset":
            history.clear()
        elif moved_n and mcfg.history == "residual":
            # The versions stand for content of the fast tier; what moved up is no longer there, so
            # it must not be counted (and migrated) again by the next windows' consensus.
            history[:] = [{m: mem.truncate(d - moved[m], 2 * cfg.rank).delta if m in moved else d
                           for m, d in v.items()} for v in history]
    tracker.observe(slow, new_slow)
    new_slow = mem.apply_decay(new_slow, tracker, interactions=interactions)
    new_slow = {m: mem.truncate(d, cfg.slow_rank).delta for m, d in new_slow.items()}
    return fast, new_slow, moved_n, moved
