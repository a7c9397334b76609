"""Synthetic facts with known ground truth: "what is the color of X ? -> Y" in several templates.

Entities and answers are the tiny model's generated pseudo-words, so every fact is new to the model
and the tokenizer maps each word to one token. Facts are shown in the training templates and tested
in a held-out template, so a method only scores when it learned the fact rather than the sentence.

A *window* (task) mixes three kinds of facts whose fate the design predicts:

* ``recurring``: a group appears in ``recurring_span`` consecutive windows, then stops. It is a stable
  pattern: it should migrate from the fast tier to the slow tier and then survive later windows.
* ``transient``: appears in one window only; must not migrate.
* ``flip``: appears in one window, then again in the next with a different answer. Its first answer
  is superseded (not counted as forgetting); the new answer is scored separately.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from dynamiclora_dev.tinymodel import TinyModelConfig, generated_words

TEMPLATES: tuple[str, ...] = (
    "what is the color of {x} ? answer :",
    "the color of {x} is",
    "question : color of {x} ? answer :",
    "user : what color is {x} ? assistant :",
)
"""Prompt templates; the answer word follows the prompt."""

HELD_OUT = 3
"""Index of the template never used for training the benchmark's facts (pretraining uses all)."""

TRAIN_TEMPLATES: tuple[int, ...] = tuple(i for i in range(len(TEMPLATES)) if i != HELD_OUT)


@dataclass(frozen=True)
class Fact:
    """One fact: ``entity``'s color is ``answer``; ``kind`` is its ground-truth category."""

    entity: str
    answer: str
    kind: str


@dataclass(frozen=True)
class Window:
    """One task window: the facts trained on and the facts it is tested on.

    Attributes:
        train: every fact shown in the window (with the answer it has in this window).
        test: the facts this window's column of the accuracy matrix scores (superseded answers
            excluded: a flipped fact is scored on its new answer only).
        flipped: facts whose answer changed in this window (new answers), scored as ``flip_acc``.
    """

    train: list[Fact]
    test: list[Fact]
    flipped: list[Fact]


@dataclass(frozen=True)
class DataConfig:
    """Shape of the synthetic task sequence."""

    windows: int = field(default=5, metadata={"help": "number of task windows"})
    transient_per_window: int = field(default=10, metadata={"help": "facts seen in one window only"})
    recurring_group: int = field(default=6, metadata={"help": "facts per recurring group"})
    recurring_span: int = field(default=3, metadata={"help": "consecutive windows a recurring group appears in"})
    flip_per_window: int = field(default=3, metadata={"help": "facts whose answer flips in the next window"})
    answers: int = field(default=12, metadata={"help": "distinct answer words (chance = 1/answers)"})

    def __post_init__(self) -> None:
        if self.windows < 3:
            raise ValueError(f"DataConfig.windows must be >= 3, got {self.windows}")
        if self.recurring_span < 2 or self.recurring_span > self.windows:
            raise ValueError(f"DataConfig.recurring_span must be in [2, windows], got {self.recurring_span}")
        for name in ("transient_per_window", "recurring_group", "flip_per_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"DataConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.answers < 2:
            raise ValueError(f"DataConfig.answers must be >= 2, got {self.answers}")


@dataclass(frozen=True)
class TaskSequence:
    """The windows plus the ground truth for migration."""

    windows: list[Window]
    should_migrate: list[Fact]
    should_not_migrate: list[Fact]
    answers: list[str]


class WordPool:
    """Draws distinct entity words without replacement (seeded)."""

    def __init__(self, words: list[str], rng: random.Random) -> None:
        self._words = list(words)
        rng.shuffle(self._words)

    def take(self, n: int) -> list[str]:
        """``n`` fresh words; raises when the vocabulary is exhausted."""
        if n > len(self._words):
            raise ValueError(f"need {n} more entity words but only {len(self._words)} are left; enlarge vocab_words")
        out, self._words = self._words[:n], self._words[n:]
        return out


def entities_needed(cfg: DataConfig) -> int:
    """Entity words one seed's task sequence draws (see :func:`build_sequence`)."""
    groups = cfg.windows - cfg.recurring_span + 1
    flips = (cfg.windows - 1) * cfg.flip_per_window  # the last window starts no flip
    return groups * cfg.recurring_group + cfg.windows * cfg.transient_per_window + flips


def answer_words(model_cfg: TinyModelConfig, n: int) -> list[str]:
    """The answer vocabulary (the first ``n`` generated words, fixed for a model config)."""
    return generated_words(model_cfg)[:n]


def split_entities(model_cfg: TinyModelConfig, n_answers: int, n_pretrain: int) -> tuple[list[str], list[str]]:
    """``(pretraining entities, benchmark entities)``: a fixed split, disjoint for every seed."""
    words = generated_words(model_cfg)[n_answers:]
    random.Random(0x5EED).shuffle(words)
    if n_pretrain >= len(words):
        raise ValueError(f"{n_pretrain} pretraining entities leave none of the {len(words)} words for the benchmark")
    return words[:n_pretrain], words[n_pretrain:]


def pretrain_facts(entities: list[str], answers: list[str]) -> list[Fact]:
    """The pretraining facts (fixed: the pretrained base is the same for every seed)."""
    rng = random.Random(0xBA5E)
    return [Fact(e, rng.choice(answers), "pretrain") for e in entities]


def build_sequence(cfg: DataConfig, model_cfg: TinyModelConfig, pool: WordPool, rng: random.Random) -> TaskSequence:
    """The task windows for one seed (entities drawn from ``pool``)."""
    answers = answer_words(model_cfg, cfg.answers)
    # Recurring groups start early enough to appear in all recurring_span windows.
    n_groups = cfg.windows - cfg.recurring_span + 1
    groups = [[Fact(e, rng.choice(answers), "recurring") for e in pool.take(cfg.recurring_group)]
              for _ in range(n_groups)]
    flips_old: list[list[Fact]] = []
    windows: list[Window] = []
    for k in range(cfg.windows):
        transient = [Fact(e, rng.choice(answers), "transient") for e in pool.take(cfg.transient_per_window)]
        recurring = [f for g, group in enumerate(groups) if g <= k < g + cfg.recurring_span for f in group]
        new_flips = ([Fact(e, rng.choice(answers), "flip") for e in pool.take(cfg.flip_per_window)]
                     if k < cfg.windows - 1 else [])
        flipped = [Fact(f.entity, _other(answers, f.answer, rng), "flipped") for f in flips_old[-1]] if k else []
        flips_old.append(new_flips)
        train = recurring + transient + new_flips + flipped
        # The first answer of a fact that will flip is superseded, so it is not part of the test.
        windows.append(Window(train=train, test=recurring + transient + flipped, flipped=flipped))
    should = [f for g in groups for f in g]
    should_not = [f for w in windows for f in w.train if f.kind != "recurring"]
    return TaskSequence(windows, should, should_not, answers)


def _other(answers: list[str], answer: str, rng: random.Random) -> str:
    return rng.choice([a for a in answers if a != answer])
