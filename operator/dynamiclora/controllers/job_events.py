"""What to reconcile when one of the operator's Jobs finishes (issue 19: event-driven freshness).

Without this, a finished Job waits for the resync: the tier notices its new version on its next pass,
the Swarm the tier's new ``currentVersion`` on its own next pass, and the compose Job's adapter on the
pass after that, up to three resync periods between "Job completed" and "served". A Job's watch event
instead triggers, in order, the object that created it, the tiers it wrote, and the Swarms those tiers
belong to; each reconcile is the usual idempotent pass, so an event seen twice costs a pass, nothing more.
"""

from __future__ import annotations

from dynamiclora.builders.names import ANNOTATION_INPUTS, ANNOTATION_TARGET, LABEL_COMPONENT, LABEL_SWARM
from dynamiclora.controllers.common import job_state
from dynamiclora.kube import Kube, Obj

OWNER_KINDS = ("MigrationPolicy", "LoRATier", "Swarm")


def finished(job: Obj) -> bool:
    """Whether the Job has completed or failed."""
    return job_state(job) != "Running"


def _owner(obj: Obj, kinds: tuple[str, ...] = OWNER_KINDS) -> tuple[str, str] | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") in kinds and ref.get("name"):
            return str(ref["kind"]), str(ref["name"])
    return None


def _tiers_written(job: Obj, owner: tuple[str, str] | None) -> list[str]:
    """The LoRATiers whose versions the Job may have published."""
    meta = job.get("metadata", {})
    tiers = [owner[1]] if owner and owner[0] == "LoRATier" else []
    if (meta.get("labels") or {}).get(LABEL_COMPONENT) == "consolidator":
        ann = meta.get("annotations") or {}
        tiers += [t for t in [ann.get(ANNOTATION_TARGET, ""), *str(ann.get(ANNOTATION_INPUTS, "")).split(",")] if t]
    return list(dict.fromkeys(tiers))


def followups(kube: Kube, job: Obj) -> list[tuple[str, str]]:
    """``(kind, name)`` to reconcile now, in this order, for a finished Job of the operator's."""
    ns = job["metadata"]["namespace"]
    owner = _owner(job)
    out: list[tuple[str, str]] = [owner] if owner else []
    tiers = _tiers_written(job, owner)
    out += [("LoRATier", t) for t in tiers]
    for tier in tiers:
        obj = kube.get("LoRATier", ns, tier)
        swarm = _owner(obj, ("Swarm",)) if obj else None
        name = swarm[1] if swarm else ((obj or {}).get("metadata", {}).get("labels") or {}).get(LABEL_SWARM)
        if name:
            out.append(("Swarm", name))
    return list(dict.fromkeys(out))
