"""Which pairs a MigrationPolicy may name: the API refuses what its Jobs cannot do (the CRD's CEL rule says
the same on the API server: tests/integration/cluster/test_cluster_crds.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dynamiclora.api.policy import RECURRENCE_PAIRS, MigrationPolicySpec


@pytest.mark.parametrize(("pairs", "ok"), [
    ([("context", "agent")], True),
    ([("context", "agent"), ("agent", "swarm")], True),  # into a shared tier: consensus, not recurrence
    ([("context", "agent"), ("swarm", "domain")], False),  # a shared tier has no records to recur in
    ([("domain", "foundation")], False),
])  # fmt: skip
def test_recurrence_moves_only_what_an_agent_was_taught(pairs: list[tuple[str, str]], ok: bool) -> None:
    spec = {"pairs": [{"source": s, "target": t} for s, t in pairs], "stability": {"method": "recurrence"}}
    if ok:
        MigrationPolicySpec.model_validate(spec)
    else:
        with pytest.raises(ValidationError, match="shared tier"):
            MigrationPolicySpec.model_validate(spec)
    MigrationPolicySpec.model_validate({**spec, "stability": {"method": "subspace"}})  # the detector can
    assert "shared tier (swarm, domain)" in RECURRENCE_PAIRS
