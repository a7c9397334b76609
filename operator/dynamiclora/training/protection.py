"""Protection of consolidated memory: the trained tier stays out of the inputs the slower tiers answer.

The slower tiers of a stack hold what migrated there because it was stable (consolidated memory). An
update of the fast tier that responds to the same inputs overwrites how the stack answers them, even
though the slower tiers' parameters are frozen: frozen parameters are not frozen behaviour. So, per
module, the input directions the frozen tiers respond to (the right singular vectors of their summed
delta, ``V``) are protected: the trained tier's LoRA ``A`` rows are kept orthogonal to them (projected
at the start and after every optimizer step), so its delta ``B A`` is zero on those inputs and the
stack answers them as the slower tiers do. The last ``plastic`` rows stay unconstrained: a small
plastic sub-rank through which a changed answer can still overwrite consolidated content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynamiclora.memory.decompose import decompose
from dynamiclora.memory.lowrank import tier_add
from dynamiclora.memory.peft_io import PREFIX, load_adapter

# Components weaker than this share of the strongest one in a module are noise, not memory.
PROTECT_RTOL = 0.05


@dataclass(frozen=True)
class Protection:
    """Per trained ``lora_A`` parameter: the protected input basis and how many rows it constrains."""

    bases: dict[str, torch.Tensor]  # parameter name -> V (d_in x k), orthonormal columns
    rows: int  # leading rows of each A kept orthogonal to V (the rest are plastic)

    def apply(self, params: dict[str, torch.Tensor]) -> None:
        """Project the constrained rows of every protected ``A`` onto the complement of its basis."""
        with torch.no_grad():
            for name, basis in self.bases.items():
                a = params[name][: self.rows]
                a -= (a @ basis) @ basis.T

    def summary(self) -> dict[str, Any]:
        """Recorded in the version's statistics."""
        return {"modules": len(self.bases), "protectedDirections": sum(int(b.shape[1]) for b in self.bases.values()),
                "constrainedRows": self.rows}


def _module_of(param_name: str) -> str | None:
    """``base_model.model.<module>.lora_A.<adapter>.weight`` -> ``<module>`` (None for other parameters)."""
    if ".lora_A." not in param_name:
        return None
    module = param_name.split(".lora_A.")[0]
    return module.removeprefix(PREFIX)


def protection(frozen_dirs: Sequence[Path], params: dict[str, torch.Tensor], rank: int,
               plastic: int) -> Protection | None:  # fmt: skip
    """The protection of the frozen tiers in ``frozen_dirs`` for the trainable ``params`` (None: nothing to protect)."""
    rows = rank - plastic
    if not frozen_dirs or rows <= 0:
        return None
    slower = tier_add([load_adapter(d)[0] for d in frozen_dirs])
    bases: dict[str, torch.Tensor] = {}
    for name, p in params.items():
        module = _module_of(name)
        if module is None or module not in slower:
            continue
        comps = decompose(slower[module], rtol=PROTECT_RTOL)
        if comps.count:
            bases[name] = comps.V.to(dtype=p.dtype, device=p.device).contiguous()
    return Protection(bases, rows) if bases else None
