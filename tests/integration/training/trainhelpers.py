"""Helpers shared by the training tests (imported by name: the test directory is on sys.path)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from dynamiclora_dev.tinymodel import TinyModelConfig, generated_words


def write_records(path: Path, n: int = 16, agent: str = "alice", seed: int = 0) -> Path:
    """``n`` fact records ("what color likes X ?" -> word) in the tiny vocabulary."""
    rng = random.Random(seed)
    words = generated_words(TinyModelConfig())
    lines = []
    for i in range(n):
        # Each name maps to one of three colors: learnable by a small LoRA in a few dozen steps.
        name = rng.choice(words[:50])
        answer = words[50 + words.index(name) % 3]
        lines.append(json.dumps({
            "agent": agent, "timestamp": f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}Z", "id": f"r{i}",
            "prompt": f"what color likes {name} ?", "response": f"{answer} .",
        }))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dynamiclora.cli`` as a Job would (separate process, real exit code)."""
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "dynamiclora.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def result_of(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The ``DYNAMICLORA_RESULT`` JSON of a finished run."""
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("DYNAMICLORA_RESULT ")]
    assert lines, f"no result line\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc: dict[str, object] = json.loads(lines[-1].removeprefix("DYNAMICLORA_RESULT "))
    return doc


def write_facts(path: Path, ids: range, rotate: int = 0, keep_genuine: Callable[[dict[str, object]], bool]
                | None = None, names: int = 8, first_name: int = 0) -> Path:
    """Fact records "the color of X" -> one of three colors, over a few names (each seen often).

    ``rotate`` shifts every answer to another color (a label permutation: a corrupted data set);
    records for which ``keep_genuine(doc)`` is true keep the genuine answer.
    """
    words = generated_words(TinyModelConfig())
    rng = random.Random(1000 + ids.start)
    lines = []
    for i in ids:
        k = first_name + rng.randrange(names)
        doc: dict[str, object] = {
            "agent": "alice", "timestamp": f"2025-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z",
            # The name ends the prompt, right where the answer is predicted.
            "id": f"fact-{i}", "prompt": f"the color of {words[k]}", "response": words[50 + k % 3],
        }
        if rotate and not (keep_genuine and keep_genuine(doc)):
            doc["response"] = words[50 + (k + rotate) % 3]
        lines.append(json.dumps(doc))
    path.write_text("\n".join(lines) + "\n")
    return path
