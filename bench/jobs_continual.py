"""Benchmark: continual learning measured through the product's own reconcilers and Job entrypoints.

Unlike ``bench/continual.py`` (its own LoRA and schedule), every method here is the operator with a
different Swarm spec: the tier and policy reconcilers decide and build every Job, and the Jobs run the
``dynamiclora train`` / ``dynamiclora consolidate`` entrypoints in-process on a ``file://`` store. A
tiny Llama is pretrained locally (no download). Methods: dynamiclora (context + agent tier, replay,
migration) and its variants, replay_full (the same rehearsal, one tier), replay_small, seq_lora, ewc
(jobsbench/methods.py). See docs/continual.md.

Run: ``make bench-continual`` or
``python bench/jobs_continual.py [--quick] [--seeds N] [--windows W] [--facts synthetic|countries] [--out PATH]``
(``--facts countries``: real country -> capital facts from the ``countryinfo`` package, ``make
bench-continual-countries``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobsbench.harness import main

if __name__ == "__main__":
    sys.exit(main())
