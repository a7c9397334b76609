"""Real facts: country -> capital, read from the ``countryinfo`` package's data (``--facts countries``).

The data ships inside the package (one JSON file per country), so a run needs no network. Names are
lowercased, stripped of accents and split into words (``"Buenos Aires"`` -> ``"buenos aires"``, two
tokens); every such word joins the tiny model's vocabulary (``TinyModelConfig.extra_words``), so a
multi-word capital is a multi-token answer, which the gate scores whole (greedy decoding must give every
word, then the end of sequence).

The base is pretrained on one part of the countries and the windows use the others, so every window's
fact is new to the model. It is also pretrained on made-up countries (pseudo-words) whose capitals are
real capitals, every capital at least once: a real LLM can say every city name, while a tiny model that
never produced a word does not learn it as an answer in a few hundred LoRA steps (with only the other
real countries in pretraining, a rank-8 LoRA trained 300 steps on 30 new countries ended at loss 3.2 and
answered 0.03 of them even in its training templates; the benchmark's first window scored 0.0). The
made-up countries never pair a real country with its capital.

A ``flip`` is a corrected record: the window first gives another country's capital, the next one the true
capital (the ``flipped`` fact, scored as the new answer).
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass
from functools import cache

import countryinfo

from dynamiclora_dev.tinymodel import TinyModelConfig, generated_words
from jobsbench.facts import CAPITAL_TEMPLATES, DataConfig, Fact, FactSource, entities_needed

BENCH_COUNTRIES = 100
"""Countries kept out of pretraining for the windows (a default run draws 80 of them per seed)."""

_SPLIT_SEED = 0xC0DE
_MADE_UP_SEED = 0xCA9


@dataclass(frozen=True)
class Country:
    """A country and its capital, both as space-separated vocabulary words."""

    name: str
    capital: str


def words_of(text: str) -> list[str]:
    """Lowercase ASCII words of ``text``: accents dropped, apostrophes joined, other punctuation splits."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    # "N'Djamena" and "Sana'a" are one word each when spoken; the tokenizer would split on the apostrophe.
    return re.findall(r"[a-z0-9]+", plain.replace("'", ""))


@cache
def load_countries() -> tuple[Country, ...]:
    """Every country of the package with one capital, sorted by name (one entry per normalised name).

    Left out: entries without a capital (Antarctica), with a list or several capitals separated by "/"
    (Vatican City State, Bonaire), and a second entry whose name normalises to one already taken.
    """
    out: dict[str, Country] = {}
    for info in (c.info() for c in countryinfo.all_countries()):
        capital = info.get("capital")
        if not isinstance(capital, str) or "/" in capital:
            continue
        name, cap = " ".join(words_of(str(info.get("name") or ""))), " ".join(words_of(capital))
        if name and cap:
            out.setdefault(name, Country(name, cap))
    return tuple(out[n] for n in sorted(out))


def country_words() -> tuple[str, ...]:
    """Words of the countries, capitals and templates (sorted): what the vocabulary must hold."""
    data = {w for c in load_countries() for w in (*c.name.split(), *c.capital.split())}
    templates = {w for t in CAPITAL_TEMPLATES for w in t.replace("{x}", " ").split() if w.isalnum()}
    return tuple(sorted(data | templates))


def split_countries(n_bench: int = BENCH_COUNTRIES) -> tuple[list[Country], list[Country]]:
    """``(pretraining countries, benchmark countries)``: a fixed seeded split, the same for every seed."""
    countries = list(load_countries())
    random.Random(_SPLIT_SEED).shuffle(countries)
    if not 0 < n_bench < len(countries):
        raise ValueError(f"{n_bench} benchmark countries out of {len(countries)} leave none for one side")
    return countries[n_bench:], countries[:n_bench]


def made_up_facts(model_cfg: TinyModelConfig, n: int, capitals: list[str]) -> list[Fact]:
    """``n`` made-up countries (pseudo-words that are no real word) whose capitals cycle through ``capitals``."""
    real = set(country_words())
    names = [w for w in generated_words(model_cfg) if w not in real][:n]
    answers = list(capitals)
    random.Random(_MADE_UP_SEED).shuffle(answers)
    return [Fact(name, answers[i % len(answers)], "pretrain", "capital") for i, name in enumerate(names)]


class CountryFacts(FactSource):
    """Country -> capital facts (relation ``capital``); answers are the true capitals but for the flips."""

    def __init__(self, model_cfg: TinyModelConfig, data: DataConfig, n_bench: int = BENCH_COUNTRIES) -> None:
        if entities_needed(data) > n_bench:
            raise ValueError(f"the window shape draws {entities_needed(data)} countries per seed, more than the "
                             f"{n_bench} kept out of pretraining")
        self._model_cfg = model_cfg
        self._n_bench = n_bench
        self._capital = {c.name: c.capital for c in load_countries()}
        self.answers = sorted(set(self._capital.values()))

    @staticmethod
    def words() -> tuple[str, ...]:
        return country_words()

    def split(self, n_pretrain: int) -> tuple[list[Fact], list[str]]:
        """Pretraining facts: every country not kept for the windows, and ``n_pretrain`` made-up ones."""
        pre, bench = split_countries(self._n_bench)
        real = [Fact(c.name, c.capital, "pretrain", "capital") for c in pre]
        return real + made_up_facts(self._model_cfg, n_pretrain, self.answers), [c.name for c in bench]

    def fact(self, entity: str, kind: str, rng: random.Random) -> Fact:
        true = self._capital[entity]
        # A fact that will flip is first recorded with another real capital, then corrected.
        answer = rng.choice([a for a in self.answers if a != true]) if kind == "flip" else true
        return Fact(entity, answer, kind, "capital")

    def corrected(self, fact: Fact, rng: random.Random) -> Fact:
        return Fact(fact.entity, self._capital[fact.entity], "flipped", "capital")
