"""Promotion of new tier versions through the quality gate, pins, and the audit trail.

The Job that produces a version judges it (held-out and regression-set loss against the version it
replaces) and records the verdict in the version's manifest, so the verdict is as durable and atomic as
the version itself. The operator only reads verdicts: the newest *accepted* version is the tier's
``currentVersion`` (what is composed and served unless a pin says otherwise); a rejected version stays
in the store for inspection and can still be pinned explicitly. Every verdict and every pin change is
appended to the tier's audit trail exactly once (the record id is derived from the version or the
object generation, so a restarted operator re-deriving the same facts writes nothing twice). Once an
append leaves more loose records than the threshold, the oldest are folded into a signed segment
(:func:`compact_audit`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dynamiclora.api.conditions import EventType, Reason
from dynamiclora.controllers.common import Event
from dynamiclora.controllers.tier_storage import is_storage_error
from dynamiclora.kube import Obj
from dynamiclora.metrics import GATE_DECISIONS
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.base import CheckpointStore, VersionRef

if TYPE_CHECKING:
    from dynamiclora.storage.audit import AuditLog, Compaction

log = logging.getLogger("dynamiclora.operator")
_NO_KEY_LOGGED = threading.Event()

HISTORY_LIMIT = 20
QUARANTINE_LIMIT = 20
SOURCES = {"training": "training", "migration": "migration", "migration-source": "migration",
           "consensus": "consensus", "consensus-agent": "consensus"}  # fmt: skip


def gate_of(ref: VersionRef) -> dict[str, Any] | None:
    """The gate verdict a Job recorded in the version's manifest (``None`` for ungated versions)."""
    gate = ref.manifest.metadata.get("gate")
    return dict(gate) if isinstance(gate, Mapping) else None


def is_accepted(ref: VersionRef) -> bool:
    """Versions published without a verdict (imports, older Jobs) count as accepted."""
    gate = gate_of(ref)
    return gate is None or verdict_accepted(gate)


def verdict_accepted(gate: Mapping[str, Any]) -> bool:
    """Only a JSON ``true`` accepts: a verdict a Job wrote badly (``"false"``, ``0``, missing) fails closed."""
    return gate.get("accepted") is True


def latest_accepted(store: CheckpointStore, ns: str, tier: str, versions: list[int] | None = None) -> VersionRef | None:
    """The newest version the gate accepted (reads manifests newest first, usually just one)."""
    for v in reversed(versions if versions is not None else store.list_versions(ns, tier)):
        ref = store.get(ns, tier, v)
        if is_accepted(ref):
            return ref
    return None


def gate_status(version: int, gate: Mapping[str, Any]) -> Obj:
    """The ``status.lastGate`` object for a verdict."""
    out: Obj = {"version": version, "accepted": verdict_accepted(gate),
                "reason": str(gate.get("reason", ""))[:1024]}  # fmt: skip
    for key, prefix in (("heldOut", "heldOut"), ("regression", "regression")):
        figures = gate.get(key)
        if isinstance(figures, Mapping):
            for field in ("baseline", "candidate"):
                if figures.get(field) is not None:
                    out[f"{prefix}{field.capitalize()}"] = round(float(figures[field]), 6)
            if key == "heldOut" and figures.get("records") is not None:
                out["heldOutRecords"] = int(figures["records"])
    for key, fields in (("heldOut", ("known", "forgotten", "learned")), ("regression", ("known", "forgotten"))):
        counts = gate.get(key)
        if isinstance(counts, Mapping):
            out.update({f"{key}{f.capitalize()}": int(counts[f]) for f in fields if counts.get(f) is not None})
    if gate.get("maxRegression") is not None:
        out["maxRegression"] = float(gate["maxRegression"])
    if gate.get("cause") in ("contradiction", "collateral"):
        out["cause"] = gate["cause"]
    return out


def quarantines(gate: Mapping[str, Any]) -> bool:
    """Whether a rejected version's records are quarantined: only when they themselves are the problem.

    A batch that contradicts what the agent knows (shuffled labels, poisoning) is quarantined; one
    rejected for collateral forgetting stays eligible, to be rehearsed by a later, replayed update.
    Verdicts from before the cause was recorded are quarantined, as they were then.
    """
    return not verdict_accepted(gate) and gate.get("cause") != "collateral"


def _figures(gate: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (("heldOut", "held-out"), ("regression", "regression set")):
        f = gate.get(key)
        if isinstance(f, Mapping) and f.get("baseline") is not None and f.get("candidate") is not None:
            known = f"forgot {f['forgotten']} of {f['known']} known, " if f.get("known") is not None else ""
            parts.append(f"{label}: {known}loss {float(f['baseline']):.4f} -> {float(f['candidate']):.4f}")
    if gate.get("accepted") is False and gate.get("cause"):
        parts.append("records quarantined (they contradict what is known)" if quarantines(gate)
                     else "collateral forgetting: records stay eligible for a replayed update")
    return "; ".join(parts) or str(gate.get("reason", ""))


def history_entry(ref: VersionRef) -> Obj:
    meta = ref.manifest.metadata
    entry: Obj = {"version": ref.version, "uri": ref.uri, "sha256": ref.digest, "created": ref.manifest.created,
                  "source": SOURCES.get(str(meta.get("kind")), "import"), "accepted": is_accepted(ref)}  # fmt: skip
    if meta.get("finalLoss") is not None:
        entry["loss"] = float(meta["finalLoss"])
    return entry


@dataclass
class Promotion:
    """What :func:`observe_versions` found."""

    current: VersionRef | None  # newest accepted
    latest: int | None  # newest published
    versions: list[int]  # every published version, as listed this pass


def observe_versions(store: CheckpointStore, ns: str, name: str, agent: str | None, old: Obj, st: Obj,
                     events: list[Event], settings: OperatorSettings | None = None) -> Promotion:  # fmt: skip
    """Record every version published since the last pass: history, verdict, audit, events.

    Versions only grow, so anything above the newest version in the status history is new; older
    versions are never re-read (retention may have deleted them meanwhile). ``settings`` decide whether
    the audit trail is compacted afterwards (None: never).
    """
    versions = store.list_versions(ns, name)
    history: list[Obj] = list(old.get("history", []))
    seen = max((int(h["version"]) for h in history), default=0)
    new = [v for v in versions if v > seen]
    audit = _audit(store, ns, name) if new else None
    for v in new:
        ref = store.get(ns, name, v)
        history.append(history_entry(ref))
        gate = gate_of(ref) or {"accepted": True, "reason": "no gate verdict recorded (ungated version)"}
        accepted = verdict_accepted(gate)
        source = SOURCES.get(str(ref.manifest.metadata.get("kind")), "import")
        contributors = [{"tier": name, "version": v, "source": source, **({"agent": agent} if agent else {})}]
        msg = f"v{v} ({source}) {'promoted' if accepted else 'rejected'}: {_figures(gate)}"
        assert audit is not None
        job = ref.manifest.metadata.get("job")
        _, created = audit.append("promotion" if accepted else "rejection", id=f"gate/v{v}", version=v,
                                  actor=f"job/{job}" if job else "operator",
                                  contributors=contributors, gate=gate, message=msg)  # fmt: skip
        st["lastGate"] = gate_status(v, gate)
        window = ref.manifest.metadata.get("window")
        if quarantines(gate) and isinstance(window, Mapping) and window.get("from") and window.get("to"):
            # The records a rejected update learned from are quarantined: later Jobs neither train on them
            # nor hold them out as truth (a poisoned batch would otherwise judge the next honest update).
            q = [w for w in st.get("quarantine", []) if int(w.get("version", 0)) != v]
            q.append({"version": v, "from": str(window["from"]), "to": str(window["to"])})
            st["quarantine"] = q[-QUARANTINE_LIMIT:]
        _release(audit, ref, st, events)
        if created:
            GATE_DECISIONS.labels(ns, name, "promoted" if accepted else "rejected").inc()
        if created or old.get("latestVersion") is None or v > int(old.get("latestVersion") or 0):
            events.append(Event(EventType.NORMAL, Reason.PROMOTED, msg) if accepted
                          else Event(EventType.WARNING, Reason.UPDATE_REJECTED, msg))  # fmt: skip
    if audit is not None:
        counts = {"accepted": 0, "rejected": 0}
        for r in audit.records():
            if r.id.startswith("gate/"):
                counts["accepted" if r.kind == "promotion" else "rejected"] += 1
        st["gateCounts"] = counts
        compact_audit(audit, settings)
    st["history"] = sorted(history, key=lambda h: int(h["version"]))[-HISTORY_LIMIT:]
    current = latest_accepted(store, ns, name, versions)
    st["latestVersion"] = versions[-1] if versions else None
    if st["latestVersion"] is None:
        st.pop("latestVersion")
    return Promotion(current, versions[-1] if versions else None, versions)


def _release(audit: Any, ref: VersionRef, st: Obj, events: list[Event]) -> None:
    """Lift the quarantine windows a training Job re-examined and found agreeing with the served stack."""
    released = ref.manifest.metadata.get("released")
    if not isinstance(released, list) or not released:
        return
    job = ref.manifest.metadata.get("job")
    kept = []
    for w in st.get("quarantine", []):
        window = f"{w.get('from')}/{w.get('to')}"
        if window not in released:
            kept.append(w)
            continue
        msg = (f"records of rejected v{w.get('version')} ({window}) now agree with what the served stack "
               f"answers: released from quarantine by v{ref.version}'s Job")
        _, created = audit.append("quarantine-release", id=f"release/v{ref.version}/{window}",
                                  version=int(w.get("version") or 0) or None,
                                  actor=f"job/{job}" if job else "operator", message=msg)  # fmt: skip
        if created:
            events.append(Event(EventType.NORMAL, Reason.QUARANTINE_RELEASED, msg))
    st["quarantine"] = kept


def observe_pin(store: CheckpointStore, ns: str, name: str, pinned: int | None, generation: int | None,
                current: int | None, old: Obj, st: Obj, events: list[Event],
                settings: OperatorSettings | None = None) -> None:  # fmt: skip
    """Audit a change of ``spec.pinnedVersion`` (rollback, roll-forward, unpin) once per generation."""
    before = old.get("pinnedVersion")
    if pinned == before:
        return
    if pinned is None:
        kind, msg = "unpin", f"unpinned (was v{before}); serving the newest accepted version v{current}"
    elif current is not None and pinned < current:
        kind, msg = "rollback", f"pinned to v{pinned}, rolling back from v{before or current}"
    elif current is not None and pinned > current:
        kind, msg = "rollforward", f"pinned to v{pinned}, ahead of the newest accepted v{current}"
    else:
        kind, msg = "pin", f"pinned to v{pinned}"
    audit = _audit(store, ns, name)
    audit.append(kind, id=f"pin/g{generation}/{pinned}", version=pinned, actor="spec.pinnedVersion", message=msg)
    compact_audit(audit, settings)
    events.append(Event(EventType.NORMAL, Reason.UNPINNED if pinned is None else Reason.PINNED, msg))
    if pinned is None:
        st.pop("pinnedVersion", None)
    else:
        st["pinnedVersion"] = pinned


def served_version_of(tier: Obj) -> int | None:
    """The version of a tier that should be served: the pinned one, else the newest accepted one."""
    spec, status = tier.get("spec", {}), tier.get("status") or {}
    pinned = spec.get("pinnedVersion")
    if pinned:
        return int(pinned)
    current = status.get("currentVersion")
    return int(current) if current else None


def trust_score(weight: float, counts: Mapping[str, Any] | None) -> float:
    """An agent's consensus weight: its user-set weight times its record at the quality gate.

    ``weight * (accepted + 1) / (accepted + rejected + 1)``: one virtual accepted update keeps an agent
    without history at its full user weight, every rejection lowers its influence over shared tiers,
    and accepted updates win it back.
    """
    acc = int((counts or {}).get("accepted", 0))
    rej = int((counts or {}).get("rejected", 0))
    return round(weight * (acc + 1) / (acc + rej + 1), 6)


def agent_trust(tiers: Mapping[str, Obj], swarm: str, agent: Any) -> float:
    """Trust score of a Swarm agent from the gate counts of its own (context and agent) tiers."""
    from dynamiclora.api.common import TierLevel
    from dynamiclora.builders.names import agent_tier_name

    counts = {"accepted": 0, "rejected": 0}
    for level in (TierLevel.CONTEXT, TierLevel.AGENT):
        tier = tiers.get(agent_tier_name(swarm, agent.name, level)) or {}
        for k, v in ((tier.get("status") or {}).get("gateCounts") or {}).items():
            counts[k] = counts.get(k, 0) + int(v)
    return trust_score(float(agent.trust_weight), counts)


def _audit(store: CheckpointStore, ns: str, name: str) -> AuditLog:
    from dynamiclora.storage.audit import AuditLog

    return AuditLog(store, ns, name)


def compact_audit(audit: AuditLog, settings: OperatorSettings | None) -> Compaction | None:
    """Fold the oldest records of ``audit`` into a signed segment when more than the threshold are loose.

    Called after appends (``audit.loose_records`` is what the last read listed). Without a key nothing is
    ever compacted (logged once per process); a failed compaction leaves every record as it was.
    """
    if settings is None or audit.loose_records <= settings.audit_compact_threshold:
        return None
    key = settings.audit_signing_key
    if key is None:
        if not _NO_KEY_LOGGED.is_set():
            _NO_KEY_LOGGED.set()
            log.warning("audit trails are not compacted: no audit key (DYNAMICLORA_AUDIT_KEY or --audit-key-file); "
                        "%s has %d loose records", audit.uri, audit.loose_records)  # fmt: skip
        return None
    try:
        done = audit.compact(key, keep=settings.audit_keep_loose, segment_records=settings.audit_segment_records)
    except Exception as e:  # housekeeping: the append it follows succeeded, and the next one tries again
        if not is_storage_error(e):
            raise
        log.warning("audit trail %s not compacted: %s", audit.uri, e)
        return None
    if done.segments:
        log.info("audit trail %s compacted into %s (%d loose records left)", audit.uri, ", ".join(done.segments),
                 done.loose)  # fmt: skip
    return done
