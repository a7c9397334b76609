"""Benchmark: continual learning of the DynamicLoRA tier stack against sequential LoRA, replay, EWC, joint.

From a seed and with no downloads: pretrain a tiny Llama in-process, then train every method on the
same sequence of synthetic fact windows (recurring, transient and flipping facts, tested in a held-out
template) and report the accuracy matrix, average accuracy, backward transfer, forgetting, migration
precision/recall against ground truth, and a multi-agent consensus part (resonance vs mean vs TIES
under an adversarial agent). Mean and 95% interval over seeds. See docs/continual.md.

Run: ``make bench-continual`` or ``python bench/continual.py [--quick] [--seeds N] [--out PATH]``.
"""

from __future__ import annotations

import sys

from dynamiclora.bench.continual.run import main

if __name__ == "__main__":
    sys.exit(main())
