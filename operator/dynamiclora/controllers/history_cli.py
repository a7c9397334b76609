"""``dynamiclora history TIER``: print a tier's audit trail (see docs/audit.md).

The store is given with ``--store`` or resolved like the operator does: the LoRATier's ``spec.storage``,
else the storage of the Swarm named by ``spec.swarmRef``. The signatures of compacted segments are
checked with the operator's audit key: ``--audit-key-file``, else ``$DYNAMICLORA_AUDIT_KEY_FILE`` or
``$DYNAMICLORA_AUDIT_KEY``; without one only the hash chain is checked (and the output says so).
Exit codes: 0 success, 1 ``--verify`` found problems (a bad signature too) or the store failed, 2 bad
input (tier not found, no storage, bad options, an unreadable key file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Protocol

from dynamiclora.storage.audit import AuditLog, AuditRecord

COLUMNS = ("SEQ", "TIME", "EVENT", "VERSION", "ACTOR", "CONTRIBUTORS", "GATE", "MESSAGE")
MAX_CONTRIBUTORS_CHARS = 48
MAX_MESSAGE_CHARS = 60
MAX_GATE_CHARS = 80


class InputError(Exception):
    """A problem the user fixes (names the object or option); exit code 2."""


class KubeGetter(Protocol):
    """The one Kubernetes call this command needs (``dynamiclora.kube.ApiKube`` provides it)."""

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when absent."""


def resolve_store(kube: KubeGetter, namespace: str, tier: str, pvc_root: str) -> tuple[str, str | None]:
    """The store URI of a LoRATier and the S3 endpoint its storage names (None for PVC or AWS).

    Raises:
        InputError: the tier (or its Swarm) does not exist, or neither declares storage.
    """
    from dynamiclora.api.common import Storage
    from dynamiclora.builders.jobs import store_uri
    from dynamiclora.settings import OperatorSettings

    body = kube.get("LoRATier", namespace, tier)
    if body is None:
        raise InputError(f"LoRATier {namespace}/{tier} not found")
    spec = body.get("spec") or {}
    raw = spec.get("storage")
    source = f"LoRATier {namespace}/{tier} spec.storage"
    if raw is None:
        swarm_name = spec.get("swarmRef")
        if not swarm_name:
            raise InputError(
                f"LoRATier {namespace}/{tier} has no spec.storage and no spec.swarmRef: "
                "no storage to read; pass --store URI"
            )
        swarm = kube.get("Swarm", namespace, swarm_name)
        if swarm is None:
            raise InputError(
                f"LoRATier {namespace}/{tier} has no spec.storage and its Swarm "
                f"{namespace}/{swarm_name} (spec.swarmRef) does not exist"
            )
        raw = (swarm.get("spec") or {}).get("storage")
        source = f"Swarm {namespace}/{swarm_name} spec.storage"
        if raw is None:
            raise InputError(f"neither LoRATier {namespace}/{tier} nor its {source} declares storage")
    try:
        storage = Storage.model_validate(raw)
    except ValueError as e:
        raise InputError(f"invalid {source}: {e}") from None
    settings = OperatorSettings.from_env(pvc_mount_root=pvc_root or None)
    endpoint = storage.s3.endpoint if storage.s3 is not None else None
    return store_uri(storage, settings), endpoint


def _num(x: Any) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "?"
    # Losses read best as 2.31; tiny or huge figures keep their significant digits instead of becoming 0.00.
    return f"{x:.2f}" if x == 0 or 0.01 <= abs(x) < 1e4 else f"{x:.3g}"


def format_gate(gate: Mapping[str, Any] | None) -> str:
    """A one-line gate summary, e.g. ``held-out 2.31->2.05 ok`` or ``held-out 2.31->3.90 REJECTED``."""
    if not gate:
        return ""
    parts = []
    for label, key in (("held-out", "heldOut"), ("regression", "regression")):
        figures = gate.get(key)
        if isinstance(figures, Mapping) and ("baseline" in figures or "candidate" in figures):
            parts.append(f"{label} {_num(figures.get('baseline'))}->{_num(figures.get('candidate'))}")
    accepted = gate.get("accepted")
    verdict = "ok" if accepted is True else "REJECTED" if accepted is False else ""
    if accepted is False and gate.get("reason"):
        verdict += f" ({gate['reason']})"
    return _cell(" ".join(p for p in (*parts, verdict) if p), MAX_GATE_CHARS)


def format_contributors(
    contributors: Sequence[Mapping[str, Any]], limit: int = MAX_CONTRIBUTORS_CHARS
) -> str:
    """``agent:version@weight`` items, comma separated; ``+N more`` when they do not fit in ``limit``."""
    items = []
    for c in contributors:
        who = str(c.get("agent") or c.get("tier") or "?")
        item = who + (f":{c['version']}" if c.get("version") is not None else "")
        if c.get("weight") is not None:
            item += f"@{_num(c['weight'])}"
        items.append(item)
    out = ""
    for i, item in enumerate(items):
        rest = len(items) - i - 1
        candidate = f"{out},{item}" if out else item
        suffix = f" +{rest} more" if rest else ""
        if len(candidate + suffix) > limit and out:
            return f"{out} +{len(items) - i} more"
        out = candidate
    return out


def _cell(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line per record
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_table(records: Sequence[AuditRecord]) -> str:
    """The records as an aligned text table with :data:`COLUMNS`."""
    rows = [list(COLUMNS)]
    for r in records:
        rows.append(
            [
                str(r.seq),
                r.time[:19].replace("T", " "),
                r.kind,
                "" if r.version is None else str(r.version),
                r.actor,
                format_contributors(r.contributors),
                format_gate(r.gate),
                _cell(r.message, MAX_MESSAGE_CHARS),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _open_log(args: argparse.Namespace) -> AuditLog:
    from dynamiclora.storage.uri import open_store

    uri, endpoint = args.store, None
    if not uri:
        from dynamiclora.kube import ApiKube, KubeError

        try:
            kube = ApiKube(args.kubeconfig)
            uri, endpoint = resolve_store(kube, args.namespace, args.tier, args.pvc_root)
        except KubeError as e:
            raise InputError(f"reading LoRATier {args.namespace}/{args.tier} from the API server: {e}") from e
    client = None
    if (
        endpoint
        and not (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    ):
        from dynamiclora.storage.s3 import s3_client_from_env

        client = s3_client_from_env(endpoint)  # the storage's endpoint unless the environment overrides it
    try:
        return AuditLog(open_store(uri, s3_client=client), args.namespace, args.tier)
    except ValueError as e:
        raise InputError(str(e)) from None


def _audit_key(args: argparse.Namespace) -> bytes | None:
    """The key the operator signs segments with, taken the way the operator takes it."""
    from dynamiclora.settings import OperatorSettings

    # Only the key's settings: other operator variables in the environment are no business of this command.
    key_file = args.audit_key_file or os.environ.get("DYNAMICLORA_AUDIT_KEY_FILE", "")
    try:
        settings = OperatorSettings(audit_key=os.environ.get("DYNAMICLORA_AUDIT_KEY", ""), audit_key_file=key_file)
        return settings.audit_signing_key
    except ValueError as e:
        raise InputError(str(e)) from None


def run_history(args: argparse.Namespace) -> int:
    """Handler of ``dynamiclora history``."""
    from dynamiclora.storage.base import StoreError

    if args.limit is not None and args.limit < 1:
        print("error: --limit must be >= 1", file=sys.stderr)
        return 2
    try:
        key = _audit_key(args)
        log = _open_log(args)
        records = log.records()
        problems = log.verify(key)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (StoreError, OSError) as e:
        print(f"error: audit store unreachable or unreadable: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # botocore's connection errors have no common base worth importing here
        print(f"error: audit store unreachable: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.verify:
        for p in problems:
            print(p)
        for note in problems.notes:
            print(f"note: {note} (pass --audit-key-file or set DYNAMICLORA_AUDIT_KEY)", file=sys.stderr)
        if problems:
            print(f"{len(problems)} problem(s) in the audit trail at {log.uri}", file=sys.stderr)
            return 1
        signed = f", {problems.segments} segment signature(s) valid" if key is not None and problems.segments else ""
        print(f"audit trail at {log.uri} is intact: {len(records)} record(s), hash chain valid{signed}")
        return 0
    if problems:
        print(f"warning: the audit trail has {len(problems)} problem(s); run with --verify", file=sys.stderr)
    shown = records[-args.limit :] if args.limit else records
    if args.output == "json":
        print(json.dumps([asdict(r) for r in shown], indent=2, sort_keys=True))
    elif not shown:
        print(f"no audit records yet for {args.namespace}/{args.tier} ({log.uri})")
    else:
        print(render_table(shown))
    return 0


def register(subparsers: Any) -> None:
    """Add ``history`` to the top-level parser."""
    p = subparsers.add_parser(
        "history",
        help="print a tier's audit trail (promotions, rejections, migrations, rollbacks, ...)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("tier", help="LoRATier name")
    p.add_argument("-n", "--namespace", default="default", help="namespace of the tier (default: default)")
    p.add_argument(
        "--store",
        help="checkpoint-store URI (file:///path or s3://bucket/prefix); "
        "default: resolved from the LoRATier on the API server",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    p.add_argument(
        "--pvc-root",
        default="",
        help="where PVC storage is mounted locally "
        "(default: $DYNAMICLORA_PVC_ROOT or the operator's default)",
    )
    p.add_argument("--verify", action="store_true",
                   help="check the hash chain and, with a key, the segments' signatures; exit 1 on any problem")
    p.add_argument("--audit-key-file",
                   help="file with the operator's audit key (default: $DYNAMICLORA_AUDIT_KEY_FILE, "
                   "$DYNAMICLORA_AUDIT_KEY; none: signatures are not checked)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--limit", type=int, help="show only the last N records")
    p.set_defaults(func=run_history)
