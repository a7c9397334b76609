"""Enums are defined once, in the API, and the Job options accept exactly their values (issue 15)."""

from __future__ import annotations

import importlib
import typing

from dynamiclora.api.common import ConsensusRule
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
