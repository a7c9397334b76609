"""The ``dynamiclora-dev`` command line: ``demo`` and ``cluster up|down|status``.

The product's ``dynamiclora`` command has no harness commands: the images do not contain the harness.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from dynamiclora_dev.demo import cli as demo_cli
from dynamiclora_dev.localcluster import cli as cluster_cli


def build_parser() -> argparse.ArgumentParser:
    """The parser with the harness's subcommands."""
    parser = argparse.ArgumentParser(prog="dynamiclora-dev", description="DynamicLoRA's local development harness.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo_cli.register(sub)
    cluster_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynamiclora-dev`` console script and of ``python -m dynamiclora_dev``."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
