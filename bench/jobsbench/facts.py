"""Facts with known ground truth: "what is the color of X ? -> Y" in several templates.

By default (:class:`SyntheticFacts`) entities and answers are the tiny model's generated pseudo-words, so
every fact is new to the model and the tokenizer maps each word to one token; ``jobsbench.countries``
gives real country -> capital facts in the same window structure (a :class:`FactSource`). Facts are
shown in the training templates and tested in a held-out template, so a method only scores when it
learned the fact rather than the sentence.

A *window* (task) mixes three kinds of facts whose fate the design predicts:

* ``recurring``: a group appears in ``recurring_span`` consecutive windows, then stops. It is a stable
  pattern: it should migrate from the fast tier to the slow tier and then survive later windows.
* ``transient``: appears in one window only; must not migrate.
* ``flip``: appears in one window, then again in the next with a different answer. Its first answer
  is superseded (not counted as forgetting); the new answer is scored separately.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
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

CAPITAL_TEMPLATES: tuple[str, ...] = (
    "what is the capital of {x} ? answer :",
    "the capital of {x} is",
    "question : capital of {x} ? answer :",
    "user : which city is the capital of {x} ? assistant :",
)
"""The country -> capital relation's templates (``--facts countries``), the held-out one at ``HELD_OUT`` too."""

RELATIONS: dict[str, tuple[str, ...]] = {"color": TEMPLATES, "capital": CAPITAL_TEMPLATES}
"""Templates per relation; every relation has as many as ``TEMPLATES`` so that indices and ``HELD_OUT`` agree."""


@dataclass(frozen=True)
class Fact:
    """One fact: ``entity``'s ``relation`` (color, capital) is ``answer``; ``kind`` is its ground-truth category."""

    entity: str
    answer: str
    kind: str
    relation: str = "color"


def prompt(fact: Fact, template: int) -> str:
    """``fact``'s question in its relation's template ``template`` (the answer follows it)."""
    return RELATIONS[fact.relation][template].format(x=fact.entity)


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


class FactSource(ABC):
    """Where a run's facts come from: the pretraining facts, the benchmark's entities and their answers.

    The window structure (:func:`build_sequence`) is the same for every source, so the same metrics apply.
    """

    answers: list[str]
    """Every answer a window can give (the flips' answers included)."""

    @abstractmethod
    def __init__(self, model_cfg: TinyModelConfig, data: DataConfig) -> None:
        """The source for a model (its vocabulary) and a window shape."""

    @staticmethod
    def words() -> tuple[str, ...]:
        """Words the tiny model's vocabulary needs beyond its own (``TinyModelConfig.extra_words``)."""
        return ()

    @abstractmethod
    def split(self, n_pretrain: int) -> tuple[list[Fact], list[str]]:
        """``(pretraining facts, benchmark entities)``: fixed for every seed, the entities disjoint."""

    @abstractmethod
    def fact(self, entity: str, kind: str, rng: random.Random) -> Fact:
        """A new fact about ``entity`` (for ``kind`` "flip": the answer the next window will correct)."""

    @abstractmethod
    def corrected(self, fact: Fact, rng: random.Random) -> Fact:
        """The ``flipped`` fact superseding the flip ``fact`` in the next window (another answer)."""


class SyntheticFacts(FactSource):
    """Pseudo-word entities whose color is one of ``n_answers`` pseudo-words, drawn per seed."""

    def __init__(self, model_cfg: TinyModelConfig, data: DataConfig) -> None:
        self._model_cfg = model_cfg
        self.answers = answer_words(model_cfg, data.answers)

    def split(self, n_pretrain: int) -> tuple[list[Fact], list[str]]:
        pre, bench = split_entities(self._model_cfg, len(self.answers), n_pretrain)
        return pretrain_facts(pre, self.answers), bench

    def fact(self, entity: str, kind: str, rng: random.Random) -> Fact:
        return Fact(entity, rng.choice(self.answers), kind)

    def corrected(self, fact: Fact, rng: random.Random) -> Fact:
        return Fact(fact.entity, _other(self.answers, fact.answer, rng), "flipped", fact.relation)


def build_sequence(cfg: DataConfig, source: FactSource, pool: WordPool, rng: random.Random) -> TaskSequence:
    """The task windows for one seed (entities drawn from ``pool``, facts about them from ``source``)."""
    # Recurring groups start early enough to appear in all recurring_span windows.
    n_groups = cfg.windows - cfg.recurring_span + 1
    groups = [[source.fact(e, "recurring", rng) for e in pool.take(cfg.recurring_group)] for _ in range(n_groups)]
    flips_old: list[list[Fact]] = []
    windows: list[Window] = []
    for k in range(cfg.windows):
        transient = [source.fact(e, "transient", rng) for e in pool.take(cfg.transient_per_window)]
        recurring = [f for g, group in enumerate(groups) if g <= k < g + cfg.recurring_span for f in group]
        new_flips = ([source.fact(e, "flip", rng) for e in pool.take(cfg.flip_per_window)]
                     if k < cfg.windows - 1 else [])
        flipped = [source.corrected(f, rng) for f in flips_old[-1]] if k else []
        flips_old.append(new_flips)
        train = recurring + transient + new_flips + flipped
        # The first answer of a fact that will flip is superseded, so it is not part of the test.
        windows.append(Window(train=train, test=recurring + transient + flipped, flipped=flipped))
    should = [f for g in groups for f in g]
    should_not = [f for w in windows for f in w.train if f.kind != "recurring"]
    return TaskSequence(windows, should, should_not, source.answers)


def _other(answers: list[str], answer: str, rng: random.Random) -> str:
    return rng.choice([a for a in answers if a != answer])
