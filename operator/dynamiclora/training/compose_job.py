"""``dynamiclora compose``: compose agents' tier stacks into served adapters, where torch and the weights are.

The operator decides what each agent serves (the tier versions, settled against half-applied
migrations) and never imports torch: it runs this entrypoint as a Job from the trainer image for the
stacks that are not composed yet, one Job for every such agent of a Swarm. Each adapter is keyed by the
exact versions it was built from and written once to ``<store>/served/<namespace>/<swarm>/<agent>/<key>/``:

* on a filesystem store (the PVC the vLLM pods mount), composed in a temporary folder beside it and
  renamed into place, so a reader sees nothing or the whole adapter;
* on S3, uploaded file by file with the ``COMPLETE`` marker last (see
  :mod:`dynamiclora.serving.served_s3`), which is all the pods' adapter-sync sidecars mirror.

A stack that is already there is skipped, so a retried or repeated Job does only what is left. With the
base model's weights readable (``--model-dir``), each adapter gets the fingerprint the hot-swap
verifies against what vLLM answers; the base model is loaded once for the whole batch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynamiclora.serving.marker import COMPLETE_MARKER
from dynamiclora.serving.served_s3 import (
    local_served_dir,
    publish_adapter,
    remote_backend,
    served_prefix,
)
from dynamiclora.storage.base import BlobBackend, BlobNotFoundError
from dynamiclora.storage.schemes import scheme_of
from dynamiclora.storage.uri import open_store, parse_tier_ref
from dynamiclora.training.options import ComposeConfig, StackSpec, TrainConfig

COMPOSITION_FILE = "composition.json"
Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


class _Destination:
    """Where one Swarm's served adapters go: a folder of the filesystem store, or keys of the bucket."""

    def __init__(self, cfg: ComposeConfig) -> None:
        self.prefix = served_prefix(cfg.namespace, cfg.swarm)
        self.backend: BlobBackend | None = None if scheme_of(cfg.store).local else remote_backend(cfg.store)
        self.root = None if self.backend else local_served_dir(cfg.store, cfg.namespace, cfg.swarm)

    def done(self, s: StackSpec) -> bool:
        if self.backend is None:
            assert self.root is not None
            return (self.root / s.agent / s.key / COMPOSITION_FILE).is_file()
        try:
            self.backend.get_bytes(f"{self.prefix}/{s.agent}/{s.key}/{COMPLETE_MARKER}")
            return True
        except BlobNotFoundError:
            return False

    def scratch(self) -> Path:
        """A temporary folder on the same filesystem as the destination (a rename is atomic there)."""
        if self.root is None:
            return Path(tempfile.mkdtemp(prefix="dynamiclora-compose-"))
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".compose-", dir=self.root))

    def put(self, s: StackSpec, adapter: Path) -> str:
        if self.backend is not None:
            key_prefix = f"{self.prefix}/{s.agent}/{s.key}"
            publish_adapter(self.backend, adapter, key_prefix)
            return self.backend.describe(key_prefix)
        assert self.root is not None
        dest = self.root / s.agent / s.key
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(adapter, dest)  # readers see either nothing or the complete adapter
        except OSError:
            if not (dest / COMPOSITION_FILE).is_file():  # not a concurrent Job's identical result
                raise
        return f"file://{dest}"


def _compose_one(s: StackSpec, work: Path, cfg: ComposeConfig) -> tuple[Path, dict[str, Any]]:
    """Download the stack's tier versions, compose them and write the adapter to ``work/adapter``."""
    from dynamiclora.memory import compose, load_adapter, save_adapter

    deltas = []
    tiers: list[dict[str, Any]] = []
    for i, (level, ref_text) in enumerate(s.tiers):
        ref = parse_tier_ref(ref_text)
        if ref.version is None:
            raise ValueError(f"--stack of agent {s.agent}: {ref_text} names no version")
        local = work / f"in{i}"
        open_store(ref.store_uri).download(ref.namespace, ref.tier, ref.version, local)
        delta, _meta = load_adapter(local)
        deltas.append(delta)
        tiers.append({"tier": ref.tier, "level": level, "version": ref.version})
    composed, report = compose(deltas, cfg.max_lora_rank)
    out = work / "adapter"
    save_adapter(composed, out, base_model_name_or_path=cfg.base_model_name)
    return out, {**report.to_dict(), "key": s.key, "label": s.label, "tiers": tiers}


class ComposeError(RuntimeError):
    """Some stacks could not be composed (the others were); the message names each agent and why."""


def run_compose(cfg: ComposeConfig, log: Log = _print) -> dict[str, Any]:
    """Compose every ``--stack`` not composed yet; the result lists what was composed and skipped.

    One agent's broken stack (a version deleted since, a corrupt checkpoint) does not hold back the
    others: they are composed and published first, then the Job fails naming the agents it could not do.
    """
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    dest = _Destination(cfg)
    stacks = cfg.stacks()
    todo = [s for s in stacks if not dest.done(s)]
    skipped = sorted(s.agent for s in stacks if s not in todo)
    composed: dict[str, str] = {}
    errors: dict[str, float] = {}
    if not todo:
        log(f"nothing to compose: {len(skipped)} stack(s) already composed")
        return {"composed": composed, "skipped": skipped, "relativeError": errors}
    work = dest.scratch()
    failed: dict[str, str] = {}
    try:
        built: list[tuple[StackSpec, Path, dict[str, Any]]] = []
        for i, s in enumerate(todo):
            try:
                adapter, summary = _compose_one(s, work / f"s{i}", cfg)
            except Exception as e:  # reported per agent below; the others go on
                failed[s.agent] = f"{type(e).__name__}: {e}"
                log(f"cannot compose {s.agent} {s.label}: {failed[s.agent]}")
                continue
            built.append((s, adapter, summary))
            errors[s.agent] = float(summary.get("relativeError", 0.0))
        if built and cfg.model_dir and Path(cfg.model_dir, "config.json").is_file():
            from dynamiclora.training.fingerprint import write_fingerprints

            write_fingerprints(cfg.model_dir, [adapter for _s, adapter, _sum in built])
        for s, adapter, summary in built:
            # Written last: its presence is what marks a filesystem adapter complete.
            (adapter / COMPOSITION_FILE).write_text(json.dumps(summary, indent=2))
            composed[s.agent] = dest.put(s, adapter)
            log(f"composed {s.agent} {s.label} -> {composed[s.agent]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        detail = "; ".join(f"{agent}: {why}" for agent, why in sorted(failed.items()))
        raise ComposeError(f"{len(failed)} of {len(todo)} stack(s) not composed ({len(composed)} done): {detail}")
    return {"composed": composed, "skipped": skipped, "relativeError": errors}


def compose_ahead(cfg: TrainConfig, version: int, log: Log = _print) -> str | None:
    """After a training Job published ``version`` (accepted by the gate), compose the stack the operator
    expects to serve with it (``--serve-stack``): the Job has torch and the model at hand, so serving the
    version needs no compose Job. Returns the stack's label, or None when nothing was composed.

    Only an optimisation: the operator decides what is served and composes by Job whatever differs
    (another version published meanwhile, a half-applied migration settled otherwise), so a failure here
    is logged, never fatal.
    """
    if not cfg.serve_stack or not cfg.serve_swarm or not cfg.serve_max_lora_rank:  # validated together
        return None
    spec = StackSpec.from_text(cfg.serve_stack)
    mine = [parse_tier_ref(ref).version for _level, ref in spec.tiers if parse_tier_ref(ref).tier == cfg.tier]
    if mine != [version]:
        log(f"compose ahead skipped: published v{version}, the stack {spec.label} names {mine}")
        return None
    compose = ComposeConfig(store=cfg.output_store, namespace=cfg.namespace, swarm=cfg.serve_swarm,
                            stack=[cfg.serve_stack], max_lora_rank=cfg.serve_max_lora_rank,
                            base_model_name=cfg.serve_base_model_name or "", model_dir=cfg.base_model,
                            threads=cfg.threads)  # fmt: skip
    try:
        run_compose(compose, log)
    except Exception as e:  # the operator's compose Job does it instead
        log(f"compose ahead of {spec.agent} {spec.label} failed, serving will compose it: {type(e).__name__}: {e}")
        return None
    return spec.label
