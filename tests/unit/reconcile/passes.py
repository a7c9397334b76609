"""One operator pass over a stored object, as the kopf layer runs it: reconcile, then write the status."""

from __future__ import annotations

from dynamiclora.controllers.conditions import write_status
from dynamiclora.controllers.swarm_report import SWARM_WRITES_ON_TIERS
from dynamiclora.controllers.tier import TierOutcome, reconcile_tier
from dynamiclora.settings import OperatorSettings

from .fakekube import FakeKube


def tier_pass(kube: FakeKube, settings: OperatorSettings, name: str, namespace: str = "default") -> TierOutcome:
    """Reconcile the LoRATier ``name`` once and store the status it computed."""
    body = kube.get("LoRATier", namespace, name)
    assert body is not None, f"no LoRATier {namespace}/{name}"
    out = reconcile_tier(kube, settings, body)
    write_status(kube, body, out.wire(), SWARM_WRITES_ON_TIERS)
    return out
