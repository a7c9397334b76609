"""The realistic-facts source of the continual benchmark (``--facts countries``): data, split, vocabulary.

No training: these check that the facts come from the installed ``countryinfo`` package, deterministically,
that the windows never reuse a pretraining country, and that every word of every prompt and answer is one
token of the tiny model (an unknown word would make a fact unlearnable or trivially equal to another).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import countryinfo
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from dynamiclora_dev.tinymodel import TinyModelConfig, build_tokenizer, ensure_tiny_model, generated_words, vocabulary
from jobsbench.base import EPOCH, fact_record
from jobsbench.countries import CountryFacts, country_words, load_countries, split_countries, words_of
from jobsbench.facts import HELD_OUT, RELATIONS, TEMPLATES, DataConfig, WordPool, build_sequence
from jobsbench.harness import FACT_SOURCES, RunConfig, model_config


def _source() -> CountryFacts:
    return CountryFacts(model_config("countries", 400), DataConfig())


def _sequence(seed: int) -> list[list[tuple[str, str, str]]]:
    src = _source()
    _, bench = src.split(300)
    rng = random.Random(seed)
    seq = build_sequence(DataConfig(), src, WordPool(bench, rng), rng)
    return [[(f.entity, f.answer, f.kind) for f in w.train] for w in seq.windows]


def test_countries_come_from_the_package() -> None:
    capitals = {c.name: c.capital for c in load_countries()}
    assert capitals["france"] == "paris"
    assert capitals["argentina"] == "buenos aires"  # multi-word: two tokens
    assert capitals["colombia"] == "bogota"  # accents dropped
    assert capitals["chad"] == "ndjamena"  # apostrophe joined
    assert "antarctica" not in capitals  # no capital
    for info in (c.info() for c in countryinfo.all_countries()):
        name = " ".join(words_of(str(info.get("name") or "")))
        if name in capitals and isinstance(info.get("capital"), str):
            assert capitals[name] == " ".join(words_of(info["capital"]))
    assert len(capitals) > 200


def test_loading_and_windows_are_deterministic() -> None:
    load_countries.cache_clear()
    first = load_countries()
    load_countries.cache_clear()
    assert load_countries() == first
    assert split_countries() == split_countries()
    assert _sequence(3) == _sequence(3)
    assert _sequence(3) != _sequence(4)


def test_pretraining_and_window_countries_are_disjoint() -> None:
    src = _source()
    pre, bench = src.split(300)
    assert {f.entity for f in pre}.isdisjoint(bench)
    real = {c.name for c in load_countries()}
    assert len([f for f in pre if f.entity in real]) + len(bench) == len(real)
    assert all(f.relation == "capital" and f.kind == "pretrain" for f in pre)
    # The made-up countries say every capital, without pairing a real country with it.
    made_up = [f for f in pre if f.entity not in real]
    assert len(made_up) == 300 and {f.answer for f in made_up} == set(src.answers)
    assert not {f.entity for f in made_up} & set(country_words())
    for seed in (1, 2, 3, 4, 5):
        entities = {e for w in _sequence(seed) for e, _, _ in w}
        assert entities <= set(bench)


def test_windows_hold_true_capitals_and_corrected_flips() -> None:
    capitals = {c.name: c.capital for c in load_countries()}
    windows = _sequence(1)
    first_answer = {e: a for w in windows for e, a, k in w if k == "flip"}
    assert first_answer  # the default shape has flips
    for w in windows:
        for entity, answer, kind in w:
            if kind == "flip":  # recorded with another real capital first
                assert answer != capitals[entity] and answer in capitals.values()
            else:  # the corrected (flipped) answer and every other fact: the package's capital
                assert answer == capitals[entity]
    assert {e for w in windows for e, _, k in w if k == "flipped"} == set(first_answer)


def test_every_word_is_one_token_of_the_tiny_model() -> None:
    cfg = model_config("countries", 400)
    tok = build_tokenizer(cfg)
    unk = tok.unk_token_id
    src = _source()
    pre, _ = src.split(300)
    facts = [*pre, *(src.fact(c.name, "transient", random.Random(0)) for c in load_countries())]
    for f in facts:
        for t in range(len(TEMPLATES)):
            rec = fact_record(f, t, "bench", EPOCH, "x")
            for text in (rec["prompt"], rec["response"]):
                ids = tok(text, add_special_tokens=False)["input_ids"]
                assert unk not in ids, text
                assert len(ids) == len(text.split()), text  # one token per word
    assert set(country_words()) <= set(vocabulary(cfg))


def test_extra_words_leave_the_synthetic_vocabulary_alone() -> None:
    plain, extended = TinyModelConfig(), model_config("countries", 400)
    assert vocabulary(extended)[: len(vocabulary(plain))] == vocabulary(plain)
    assert generated_words(extended) == generated_words(plain)
    with pytest.raises(ValueError, match="letters and digits"):
        TinyModelConfig(extra_words=("buenos aires",))


def test_relations_share_the_template_layout() -> None:
    assert all(len(t) == len(TEMPLATES) for t in RELATIONS.values())
    assert "which city" in RELATIONS["capital"][HELD_OUT]
    assert set(FACT_SOURCES) == {"synthetic", "countries"}
    with pytest.raises(ValueError, match="extra_words"):
        RunConfig(facts="countries")  # the model must know the countries' words
    RunConfig(facts="countries", model=model_config("countries", 400))
    with pytest.raises(ValueError, match="kept out of pretraining"):
        CountryFacts(model_config("countries", 400), DataConfig(windows=10))  # 175 countries a seed


def test_a_model_saved_before_extra_words_is_still_current(tmp_path: Path) -> None:
    path = ensure_tiny_model(tmp_path / "m")
    marker = path / "dynamiclora-tiny.json"
    old = {k: v for k, v in json.loads(marker.read_text()).items() if k != "extra_words"}
    marker.write_text(json.dumps(old))
    weights = path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ensure_tiny_model(path) == path and weights.stat().st_mtime_ns == before
