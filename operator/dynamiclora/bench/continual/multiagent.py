"""Multi-agent part: a shared tier from 8 agents' deltas under each consensus rule, one adversary.

Each agent trains its own LoRA on the pretrained base (same initialisation, its own data):

* ``shared`` facts: every honest agent, same answers (the shared tier should know them);
* ``private`` facts: one agent each (the shared tier should not learn them: leakage);
* ``conflicting`` facts: honest agents split between two answers (should cancel);
* the adversary trains on the shared facts with wrong answers and boosts its delta (model poisoning).

Per rule (:data:`dynamiclora.memory.RULES`): shared-fact accuracy and private-fact accuracy of the
shared tier alone on the base (held-out template), and the adversary's shift
``||C(all) - C(honest)|| / ||C(honest)||`` where ``C`` is the rule's consensus.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from dynamiclora import memory as mem

from .data import HELD_OUT, TRAIN_TEMPLATES, Encoder, Fact, WordPool
from .lora import correct, get_tier, set_tier, tier_params, train_steps, with_tiers
from .methods import TrainConfig


@dataclass(frozen=True)
class AgentsConfig:
    """Shape of the multi-agent scenario."""

    agents: int = field(default=8, metadata={"help": "agents including the adversary"})
    shared: int = field(default=10, metadata={"help": "facts every honest agent knows"})
    private: int = field(default=5, metadata={"help": "facts per agent known to it only"})
    conflicting: int = field(default=4, metadata={"help": "facts the honest agents disagree on"})
    adversary_boost: float = field(default=3.0, metadata={"help": "factor the adversary scales its delta by"})
    steps: int = field(default=40, metadata={"help": "training steps per agent"})
    shared_rank: int = field(default=16, metadata={"help": "rank of the shared tier"})

    def __post_init__(self) -> None:
        if self.agents < 3:
            raise ValueError(f"AgentsConfig.agents must be >= 3, got {self.agents}")
        if self.shared < 1 or self.private < 0 or self.conflicting < 0 or self.steps < 1:
            raise ValueError("AgentsConfig: shared and steps must be >= 1, private and conflicting >= 0")
        if self.adversary_boost <= 0:
            raise ValueError(f"AgentsConfig.adversary_boost must be > 0, got {self.adversary_boost}")


def run_agents(base: Any, enc: Encoder, answers: list[str], pool: WordPool, rng: random.Random, seed: int,
               cfg: AgentsConfig, tcfg: TrainConfig) -> dict[str, dict[str, float]]:
    """Train the agents, combine them with every rule, and score each shared tier."""
    shared = [Fact(e, rng.choice(answers), "shared") for e in pool.take(cfg.shared)]
    private = [[Fact(e, rng.choice(answers), "private") for e in pool.take(cfg.private)]
               for _ in range(cfg.agents)]
    pairs = [(e, rng.sample(answers, 2)) for e in pool.take(cfg.conflicting)]
    honest_n = cfg.agents - 1
    deltas: list[mem.TierDelta] = []
    for a in range(cfg.agents):
        if a < honest_n:
            side = 0 if a < honest_n // 2 + honest_n % 2 else 1
            facts = shared + private[a] + [Fact(e, ys[side], "conflicting") for e, ys in pairs]
        else:
            facts = [Fact(f.entity, rng.choice([x for x in answers if x != f.answer]), "poison") for f in shared]
        model = with_tiers(base, {"agent": tcfg.rank}, "agent", seed)
        gen = torch.Generator().manual_seed(seed * 1009 + a)
        train_steps(model, tier_params(model, "agent"), enc.encode(facts, TRAIN_TEMPLATES), cfg.steps,
                    tcfg.batch_size, tcfg.lr, gen, enc.pad)
        delta = get_tier(model, "agent")
        deltas.append(delta if a < honest_n else mem.tier_scaled(delta, cfg.adversary_boost))
    scorer = with_tiers(base, {"shared": cfg.shared_rank}, None, seed)
    candidates = [enc.ids[x] for x in answers]
    all_private = [f for fs in private for f in fs]

    def acc(tier: mem.TierDelta, facts: list[Fact]) -> float:
        set_tier(scorer, "shared", tier, torch.Generator().manual_seed(seed))
        hits = correct(scorer, enc.encode(facts, [HELD_OUT]), candidates, enc.pad)
        return sum(hits) / len(hits) if hits else math.nan

    out: dict[str, dict[str, float]] = {}
    ccfg = mem.ConsensusConfig(rank=cfg.shared_rank)
    for rule in mem.RULES:
        combined, _ = mem.consensus(deltas, rule=rule, config=ccfg)
        honest, _ = mem.consensus(deltas[:honest_n], rule=rule, config=ccfg)
        ref = math.sqrt(mem.tier_energy(honest))
        out[str(rule)] = {
            "shared_acc": acc(combined, shared),
            "private_leakage": acc(combined, all_private),
            "adversary_shift": mem.tier_distance(combined, honest) / ref if ref > 0 else math.nan,
            "honest_shared_acc": acc(honest, shared),
        }
    out["_chance"] = {"private_leakage_base": acc({}, all_private), "shared_acc_base": acc({}, shared)}
    return out
