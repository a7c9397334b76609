"""A switch of the API is a real boolean: "false", 0 or "no" never silently turn a gate or a bypass off (issue 18).

The API server's schema already refuses them; the models refuse them too, so no other path into the operator
(a test, a dry run, a future client) reads a string as a switch.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dynamiclora.api.policy import EmergencyBypass, MigrationPolicySpec
from dynamiclora.api.tier import QualityGate


@pytest.mark.parametrize("value", ["false", "true", 0, 1, "no", None])
def test_switches_take_booleans_only(value: object) -> None:
    with pytest.raises(ValidationError):
        QualityGate.model_validate({"enabled": value})
    with pytest.raises(ValidationError):
        EmergencyBypass.model_validate({"enabled": value})


def test_booleans_pass() -> None:
    assert QualityGate.model_validate({"enabled": False}).enabled is False
    assert EmergencyBypass.model_validate({"enabled": True}).enabled is True
    assert "dry_run" in MigrationPolicySpec.model_fields
