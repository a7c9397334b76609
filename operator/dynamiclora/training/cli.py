"""``dynamiclora train``, ``consolidate`` and ``compose``: the Job entrypoints.

Imports of torch/PEFT happen inside the handlers so that building the top-level parser stays cheap.
Exit codes: 0 success, 2 bad input (records, options, tier/base-model mismatch), 1 any other failure.
On success the last stdout line is ``DYNAMICLORA_RESULT <json>``; ``--result-file`` gets the same JSON
(or ``{"error": ...}`` on failure), e.g. ``/dev/termination-log`` so the operator reads it from the pod.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynamiclora.storage.schemes import local_path
from dynamiclora.training.options import (
    ComposeConfig,
    ConsolidateConfig,
    TrainConfig,
    add_dataclass_arguments,
    from_namespace,
)

RESULT_PREFIX = "DYNAMICLORA_RESULT "
# Local sources read late (the gate runs after training): checked before any work. Flag per option.
_INPUT_OPTIONS = {"regression_data": "--regression-data", "anchor_data": "--anchor-data", "gate_data": "--gate-data",
                  "gate_regression": "--gate-regression"}
# The kubelet truncates termination messages at 4096 bytes; keep the file well under it.
_RESULT_FILE_LIMIT = 4000


def _write_result_file(path: str | None, doc: dict[str, Any]) -> None:
    if not path:
        return
    text = json.dumps(doc, sort_keys=True)
    # Kubernetes keeps at most 4 KiB of a termination message; a file on a volume has no such limit.
    if path.startswith("/dev/") and len(text) > _RESULT_FILE_LIMIT:
        text = json.dumps({k: doc[k] for k in ("version", "uri", "digest", "error", "status", "gate") if k in doc})
    try:
        if path.startswith("/dev/"):
            Path(path).write_text(text)
        else:  # a file on the shared volume or an object in the bucket, replaced whole
            from dynamiclora.storage.results import write_result

            write_result(path, text)
    except Exception as e:  # the result is a courtesy to the operator: the Job's outcome stands without it
        print(f"warning: cannot write result file {path}: {e}", file=sys.stderr)


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from dynamiclora.training.checkpoint import ResumeMismatchError
    from dynamiclora.training.model import TierMismatchError
    from dynamiclora.training.records import RecordsError

    return (RecordsError, TierMismatchError, ResumeMismatchError, ValueError)


def missing_input(cfg: Any) -> str | None:
    """``--flag path: no such file or directory`` for the first local input source that does not exist."""
    for attr, flag in _INPUT_OPTIONS.items():
        value = getattr(cfg, attr, None)
        for source in value if isinstance(value, list) else [value] if value else []:
            try:
                local = local_path(source)
            except ValueError as e:
                return f"{flag} {source}: {e}"
            if local is not None and not local.exists():
                return f"{flag} {source}: no such file or directory"
    return None


def _fail(message: str, result_file: str | None, code: int) -> int:
    # The error line is the last one of the log: the kubelet's FallbackToLogsOnError copies the log's tail
    # into the pod status, and the operator reports its last line.
    _write_result_file(result_file, {"error": message})
    print(f"error: {message}", file=sys.stderr, flush=True)
    headline, _, details = message.partition("\n")
    if details:
        print(f"error: {headline.rstrip(':')} (details above)", file=sys.stderr, flush=True)
    return code


def _run(job: Callable[[], dict[str, Any]], result_file: str | None) -> int:
    from dynamiclora.storage import StoreError

    try:
        result = job()
    except StoreError as e:
        return _fail(f"checkpoint store: {e}", result_file, 1)
    except _bad_input_types() as e:
        return _fail(str(e), result_file, 2)
    except Exception as e:
        traceback.print_exc()
        return _fail(f"{type(e).__name__}: {e}", result_file, 1)
    print(RESULT_PREFIX + json.dumps(result, sort_keys=True), flush=True)
    if "worker" not in result:  # a distributed run's other ranks: rank 0 writes the Job's result
        _write_result_file(result_file, result)
    return 0


def _entrypoint(config_cls: type[Any], runner: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand handler: parse the options into ``config_cls`` (exit 2 on bad options), run ``runner``.

    ``runner`` is ``module:function`` and is imported only when the command runs (torch/PEFT imports).
    """

    def main(args: argparse.Namespace) -> int:
        try:
            cfg = from_namespace(config_cls, args)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        missing = missing_input(cfg)
        if missing:
            return _fail(missing, cfg.result_file, 2)
        module, _, func = runner.partition(":")

        def job() -> dict[str, Any]:
            from dynamiclora.training.base_model import with_local_models

            result: dict[str, Any] = getattr(importlib.import_module(module), func)(with_local_models(cfg))
            return result

        return _run(job, cfg.result_file)

    return main


train_main = _entrypoint(TrainConfig, "dynamiclora.training.trainer:run_training")
consolidate_main = _entrypoint(ConsolidateConfig, "dynamiclora.training.consolidate:run_consolidation")
compose_main = _entrypoint(ComposeConfig, "dynamiclora.training.compose_job:run_compose")


# One row per Job entrypoint: (command, its config, its handler, --help line, description).
ENTRYPOINTS: tuple[tuple[str, type[Any], Callable[[argparse.Namespace], int], str, str], ...] = (
    ("train", TrainConfig, train_main,
     "train one tier of a stack on interaction records (Job entrypoint)",
     "Train one LoRA tier with PEFT on interaction records, with the slower tiers loaded frozen so the tier "
     "learns the residual; publish it as the next version in the checkpoint store."),
    ("consolidate", ConsolidateConfig, consolidate_main,
     "migrate stable components upward, or build a shared tier by consensus (Job entrypoint)",
     "Migration: move the stable components of a fast tier's recent versions into a slower tier. Consensus: "
     "combine several agents' tiers into a shared tier. New versions are published to the checkpoint store."),
    ("compose", ComposeConfig, compose_main,
     "compose agents' tier stacks into the adapters vLLM serves (Job entrypoint)",
     "Sum each agent's tier versions into one PEFT adapter (truncated to --max-lora-rank), fingerprint it with "
     "the base model, and write it under served/NAMESPACE/SWARM/AGENT/KEY of the store; stacks already "
     "composed are skipped."),
)  # fmt: skip


def register(subparsers: Any) -> None:
    """Add the ``train``, ``consolidate`` and ``compose`` subcommands."""
    for command, config, handler, help_line, description in ENTRYPOINTS:
        parser = subparsers.add_parser(command, help=help_line, description=description)
        add_dataclass_arguments(parser, config)
        parser.set_defaults(func=handler)
