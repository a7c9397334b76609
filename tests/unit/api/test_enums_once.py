"""Enums are defined once, in the API, and the Job options accept exactly their values (issue 15)."""

from __future__ import annotations

import importlib
import typing
from pathlib import Path

from dynamiclora.api import conditions
from dynamiclora.api.common import ConsensusRule
from dynamiclora.api.conditions import ConditionType, EventType, Reason
from dynamiclora.api.policy import StabilityMethod
from dynamiclora.training.options import ConsolidateConfig

consensus = importlib.import_module("dynamiclora.memory.consensus")  # the package exports a function of that name
stability = importlib.import_module("dynamiclora.memory.stability")


def test_the_core_uses_the_api_enums() -> None:
    assert consensus.ConsensusRule is ConsensusRule
    assert stability.StabilityMethod is StabilityMethod
    assert set(consensus.RULES) == set(ConsensusRule)  # one implementation registered per rule


def test_the_job_options_accept_exactly_the_api_values() -> None:
    hints = typing.get_type_hints(ConsolidateConfig)
    assert set(typing.get_args(hints["rule"])) == {r.value for r in ConsensusRule}
    assert set(typing.get_args(hints["method"])) == {m.value for m in StabilityMethod}


def test_every_condition_type_and_reason_is_used() -> None:
    """Reasons live in ``api/conditions.py`` and mypy refuses a literal where ``set_condition`` or ``Event``
    wants one; this checks the other direction: a reason no controller produces is a decorative constant."""
    root = Path(conditions.__file__).parent.parent
    sources = "\n".join(p.read_text() for p in (root / "controllers").glob("*.py"))
    unused = [f"{kind.__name__}.{m.name}" for kind in (ConditionType, EventType, Reason) for m in kind
              if f"{kind.__name__}.{m.name}" not in sources]  # fmt: skip
    assert not unused, unused
