"""Helpers shared by the training tests (imported by name: the test directory is on sys.path)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from dynamiclora.tinymodel import TinyModelConfig, generated_words


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
