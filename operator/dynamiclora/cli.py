"""The ``dynamiclora`` command line.

Each feature module owns its subcommands: it exposes ``register(subparsers)`` which adds one or more
parsers whose ``func`` default takes the parsed namespace and returns an exit code. Modules are
imported lazily by name so that ``dynamiclora version`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# Modules contributing subcommands, each with a ``register(subparsers)`` function.
COMMAND_MODULES: tuple[str, ...] = (
    "dynamiclora.api.cli",
    "dynamiclora.controllers.cli",
    "dynamiclora.serving.sync_cli",
    "dynamiclora.controllers.history_cli",
    "dynamiclora.training.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="dynamiclora",
        description="DynamicLoRA: hierarchical LoRA memory for LLM agents on Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynamiclora`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
