"""A tiny static provisioner: every Pending PersistentVolumeClaim gets a hostPath PersistentVolume.

The local cluster has no storage driver, so a pod with a PVC (the vLLM StatefulSet, training Jobs)
would stay unschedulable. For each Pending claim this creates a PersistentVolume named
``local-<claim uid>`` whose hostPath is ``<state>/pvc/<namespace>/<claim>`` (the same folder the
executor maps the claim to) and pre-binds it with ``claimRef``; the real PV controller then binds the
pair. The folder outlives the claim (reclaim policy Retain), like a real disk would until deleted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dynamiclora_dev.localcluster.rest import ApiError, Rest

log = logging.getLogger(__name__)


def volume_for(claim: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """The PersistentVolume that satisfies ``claim``."""
    meta = claim["metadata"]
    spec = claim.get("spec", {})
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    path = state_dir / "pvc" / meta["namespace"] / meta["name"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"local-{meta['uid']}", "labels": {"dynamiclora.io/local-volume": "true"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": spec.get("storageClassName") or "",
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


def bind_pending_claims(rest: Rest, state_dir: Path) -> int:
    """Create volumes for Pending claims that have none yet; returns how many were created."""
    claims = rest.get("/api/v1/persistentvolumeclaims")["items"]
    created = 0
    for claim in claims:
        if claim.get("status", {}).get("phase") != "Pending" or claim["spec"].get("volumeName"):
            continue
        volume = volume_for(claim, state_dir)
        Path(volume["spec"]["hostPath"]["path"]).mkdir(parents=True, exist_ok=True)
        try:
            rest.create("/api/v1/persistentvolumes", volume)
            created += 1
        except ApiError as exc:
            if exc.status != 409:
                log.warning("cannot create a volume for claim %s: %s", claim["metadata"]["name"], exc)
    return created
