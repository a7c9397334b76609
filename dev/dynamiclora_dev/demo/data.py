"""Generated interaction records for the demo and the e2e scenario (seeded, no download).

Each agent has a few "facts" (entity -> answer) drawn from the tiny model's vocabulary; records ask
about them in a fixed template, so successive training rounds reinforce the same directions (which then
prove stable and migrate) while a one-off fact appears in a single round only.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

from dynamiclora_dev.tinymodel import TinyModelConfig, generated_words


def facts(agent: str, n: int = 4, seed: int = 0) -> dict[str, str]:
    """The agent's stable facts: entity -> answer."""
    rng = random.Random(f"{seed}:{agent}")
    words = generated_words(TinyModelConfig())
    picks = rng.sample(words, 2 * n)
    return {picks[i]: picks[n + i] for i in range(n)}


def records(agent: str, n: int, round_: int, seed: int = 0) -> list[dict[str, object]]:
    """``n`` records of ``agent`` for one round: mostly its stable facts, plus one transient fact."""
    rng = random.Random(f"{seed}:{agent}:{round_}")
    stable = facts(agent, seed=seed)
    words = generated_words(TinyModelConfig())
    transient = (rng.choice(words), rng.choice(words))
    now = dt.datetime.now(dt.UTC)
    out: list[dict[str, object]] = []
    for i in range(n):
        entity, answer = transient if i == 0 else rng.choice(sorted(stable.items()))
        out.append({
            "agent": agent,
            "timestamp": (now + dt.timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
            "prompt": f"user : what is the color of {entity} ?",
            "response": f"the color of {entity} is {answer} .",
            "id": f"{agent}-{round_}-{i}",
        })  # fmt: skip
    return out


def round_facts(agent: str, round_: int, n: int = 4, seed: int = 0) -> dict[str, str]:
    """``n`` facts taught in round ``round_`` only: entities disjoint across rounds and from :func:`facts`."""
    rng = random.Random(f"{seed}:{agent}:rounds")
    stable = facts(agent, seed=seed)
    words = [w for w in generated_words(TinyModelConfig()) if w not in stable and w not in stable.values()]
    rng.shuffle(words)
    half = len(words) // 2
    entities, answers = words[:half], words[half:]
    if (round_ + 1) * n > half:
        raise ValueError(f"round {round_}: only {half // n} rounds of {n} distinct facts exist")
    return {entities[round_ * n + i]: answers[(round_ * n + i) * 7 % len(answers)] for i in range(n)}


def fact_records(agent: str, taught: dict[str, str], n: int, round_: int) -> list[dict[str, object]]:
    """``n`` records of one round asking about ``taught`` in turn (the demo's question template)."""
    now = dt.datetime.now(dt.UTC)
    items = sorted(taught.items())
    return [{
        "agent": agent,
        "timestamp": (now + dt.timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
        "prompt": f"user : what is the color of {items[i % len(items)][0]} ?",
        "response": f"the color of {items[i % len(items)][0]} is {items[i % len(items)][1]} .",
        "id": f"{agent}-facts-{round_}-{i}",
    } for i in range(n)]  # fmt: skip


def corrupted_records(agent: str, n: int, round_: int, seed: int = 0) -> list[dict[str, object]]:
    """A round with shuffled labels: the agent's questions, each answered with another fact's answer.

    What a buggy logger or a poisoning agent would feed in; the quality gate must refuse what a model
    learns from it.
    """
    out = records(agent, n, round_, seed)
    stable = facts(agent, seed=seed)
    entities = sorted(stable)
    wrong = {e: stable[entities[(i + 1) % len(entities)]] for i, e in enumerate(entities)}  # a derangement
    for r in out:
        entity = str(r["prompt"]).split(" of ", 1)[1].removesuffix(" ?")
        if entity in wrong:
            r["response"] = f"the color of {entity} is {wrong[entity]} ."
    return out


def write_records(folder: Path, agent: str, n: int, round_: int, seed: int = 0, corrupted: bool = False,
                  taught: dict[str, str] | None = None) -> Path:
    """Append one round of records as a new JSONL file (atomically: temp name, then rename).

    ``taught``: the round asks about these facts only (:func:`fact_records`) instead of the agent's
    stable facts.
    """
    folder = folder / agent
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"round-{round_:04d}.jsonl"
    tmp = folder / f".round-{round_:04d}.jsonl.tmp"
    if taught is not None:
        rows = fact_records(agent, taught, n, round_)
    else:
        rows = (corrupted_records if corrupted else records)(agent, n, round_, seed)
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(final)
    return final


def write_regression_set(folder: Path, agent: str, seed: int = 0) -> Path:
    """The agent's fixed regression set (each stable fact asked twice), written once."""
    path = folder / f"{agent}.jsonl"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (entity, answer) in enumerate(sorted(facts(agent, seed=seed).items()) * 2):
        rows.append({"agent": agent, "timestamp": "2026-01-01T00:00:00Z", "id": f"{agent}-regression-{i}",
                     "prompt": f"user : what is the color of {entity} ?",
                     "response": f"the color of {entity} is {answer} ."})  # fmt: skip
    tmp = folder / f".{agent}.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path
