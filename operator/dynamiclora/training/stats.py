"""Statistics of a published tier version (copied by the operator into LoRATier status).

The component spectrum is the exact SVD of each module's ``B A`` computed by the memory core
(:func:`dynamiclora.memory.decompose.decompose`: QR of the factors, then an ``r x r`` SVD).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dynamiclora.memory.peft_io import load_adapter
from dynamiclora.memory.stats import delta_statistics

STATS_FILE = "stats.json"


def tier_statistics(adapter_dir: Path, spectrum_len: int = 16) -> dict[str, Any]:
    """Energy, norm, per-module Frobenius norms and spectra of an adapter directory.

    Returns:
        :func:`~dynamiclora.memory.stats.delta_statistics` plus ``deltaNorms`` (module -> ``||ΔW||_F``).
    """
    delta, _meta = load_adapter(adapter_dir)
    stats: dict[str, Any] = dict(delta_statistics(delta, spectrum_len=spectrum_len))
    modules: dict[str, dict[str, Any]] = stats["modules"]
    stats["deltaNorms"] = {name: math.sqrt(max(float(m["energy"]), 0.0)) for name, m in modules.items()}
    return stats
