"""CLI commands of the API layer: ``version``, ``manifests`` and ``validate``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dynamiclora import API_VERSION, __version__


def _version(args: argparse.Namespace) -> int:
    print(f"dynamiclora {__version__} (API {API_VERSION})")
    return 0


def _manifests(args: argparse.Namespace) -> int:
    from dynamiclora.api.crd import render_crds

    files = render_crds()
    for folder in [args.out, *(args.chart or [])]:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            target = out / name
            if not target.exists() or target.read_text() != text:
                target.write_text(text)
                print(f"wrote {target}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from dynamiclora.api.validate import validate_files

    problems = validate_files(args.files)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {len(args.files)} file(s)", file=sys.stderr)
        return 1
    print(f"{len(args.files)} file(s) valid")
    return 0


def register(sub: Any) -> None:
    """Add the API subcommands to the top-level parser."""
    p = sub.add_parser("version", help="print the version and API version")
    p.set_defaults(func=_version)

    p = sub.add_parser("manifests", help="generate the CRD YAML from the API models")
    p.add_argument("--out", default="crds", help="folder for the CRD files (default: crds)")
    p.add_argument("--chart", action="append", help="also write into this folder (repeatable)")
    p.set_defaults(func=_manifests)

    p = sub.add_parser(
        "validate",
        help="check Swarm/LoRATier/MigrationPolicy YAML against the API",
        description="Validate custom-resource YAML files; prints FILE:LINE: FIELD: PROBLEM per problem and "
        "exits 1 when any file is invalid.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML files (multi-document allowed)")
    p.set_defaults(func=_validate)
