"""Config dataclasses of the Job entrypoints and their argparse mapping.

Every field carries ``metadata={"help": ...}``; :func:`add_dataclass_arguments` turns the fields into
``--kebab-case`` options so the ``--help`` text and the config can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one option per dataclass field (``--field-name``), with its help text and default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _optional = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help")
        if not help_text:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text}
        if required:
            kwargs["required"] = True
        elif f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
            if f.default not in (None, False, ""):
                kwargs["help"] = f"{help_text} (default: {f.default})"
        else:
            kwargs["default"] = f.default_factory()  # type: ignore[misc,operator]
            if kwargs["default"]:
                kwargs["help"] = f"{help_text} (default: {' '.join(map(str, kwargs['default']))})"
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is Literal:
            kwargs["choices"] = list(typing.get_args(tp))
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            kwargs["type"] = item
            kwargs["action"] = "append" if f.metadata.get("repeat") else None
            if kwargs["action"] is None:
                del kwargs["action"]
                kwargs["nargs"] = "+"
            else:
                kwargs["default"] = None
        else:
            kwargs["type"] = tp
        if "metavar" in f.metadata:
            kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(flag, **kwargs)


def to_argv(cfg: Any) -> list[str]:
    """The command line that :func:`add_dataclass_arguments` parses back into ``cfg`` (the Job contract).

    Every set field is written, defaults included: a Job may run an image of another version than the
    operator's, whose defaults may differ. ``None`` and empty repeatable lists are left out (they are
    those fields' defaults everywhere).
    """
    hints = typing.get_type_hints(type(cfg))
    out: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp, _optional = _unwrap_optional(hints[f.name])
        if tp is bool:
            out.append(flag if value else "--no-" + flag[2:])
        elif typing.get_origin(tp) is list:
            items = [_text(v) for v in value]
            out += [x for v in items for x in (flag, v)] if f.metadata.get("repeat") else [flag, *items]
        else:
            out += [flag, _text(value)]
    return out


def _text(value: Any) -> str:
    # repr keeps every digit of a float (what ``float()`` reads back is the same number); "g" would round.
    return repr(value) if isinstance(value, float) else str(value)


def from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    """Build the dataclass from parsed options (repeatable list options default to empty)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        v = getattr(ns, f.name)
        if v is None and f.metadata.get("repeat"):
            v = []
        values[f.name] = v
    return cls(**values)


BadLines = Literal["reject", "skip"]
Strategy = Literal["ddp", "fsdp"]


@dataclass
class TrainConfig:
    """Options of ``dynamiclora train`` (one tier of one stack)."""

    base_model: str = field(metadata={"help": "directory of the base model (Hugging Face format), or an s3:// "
                                               "prefix holding one (fetched once into $DYNAMICLORA_MODEL_CACHE)"})
    data: str = field(metadata={"help": "interaction records: a .jsonl file, a directory of them, or s3://bucket/prefix"})
    output_store: str = field(metadata={"help": "checkpoint store URI (file:///path or s3://bucket/prefix)"})
    tier: str = field(metadata={"help": "name of the tier to train (its checkpoints live under NAMESPACE/TIER)"})
    namespace: str = field(default="default", metadata={"help": "stack namespace in the store"})
    frozen: list[str] = field(default_factory=list, metadata={
        "help": "a slower tier to load frozen, as STORE/NAMESPACE/TIER[/v000007] (latest when no version); "
                "repeat for several", "repeat": True, "metavar": "REF"})
    init_from: str | None = field(default=None, metadata={
        "help": "start from this adapter version of the tier (REF as for --frozen, or 'latest' for the "
                "newest version of --tier); default: fresh initialisation"})
    rank: int = field(default=8, metadata={"help": "LoRA rank r of the trained tier"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scaling alpha/r)"})
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      metadata={"help": "module names to adapt (space separated)"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lr_warmup: float = field(default=0.0, metadata={
        "help": "fraction of the steps at the start over which the learning rate rises linearly to --lr: Adam's "
                "first steps move every parameter by about --lr whatever its gradient, which knocks a tier that "
                "already fits its facts off them"})
    lr_warmdown: float = field(default=0.0, metadata={
        "help": "fraction of the steps at the end over which the learning rate falls linearly towards 0 (0: "
                "constant). The run ends at rest, so the quality gate judges settled weights rather than the "
                "last, noisy step's"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (overrides --epochs)"})
    epochs: int = field(default=1, metadata={"help": "passes over the records when --steps is not given"})
    batch_size: int = field(default=4, metadata={"help": "records per optimizer step"})
    max_seq_len: int = field(default=256, metadata={"help": "tokens per record (longer ones are truncated)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, data order and dropout"})
    checkpoint_every: int = field(default=10, metadata={"help": "steps between resumable checkpoints (0: never)"})
    ewc_lambda: float = field(default=0.0, metadata={
        "help": "elastic weight consolidation (a peer of replay, training/ewc.py): pull the trained tier "
                "towards the version it starts from, each parameter by its Fisher information on stored "
                "records, with this strength; 0: off"})
    ewc_records: int = field(default=64, metadata={
        "help": "EWC: stored questions (newest answer each) the Fisher information is estimated on"})
    anchor_data: str | None = field(default=None, metadata={
        "help": "answers kept steady (training/steady.py): records (same formats as --data) whose prompts the "
                "update must answer as the served stack does; each step adds --anchor-weight x the KL divergence "
                "of the answer distributions on a batch of them. Their answers are never trained"})
    anchor_weight: float = field(default=1.0, metadata={
        "help": "weight of the --anchor-data KL term in the loss (0: off)"})
    strategy: Strategy = field(default="ddp", metadata={
        "help": "under torchrun: ddp, every process holds the whole stack and the trained tier's gradients are "
                "all-reduced; fsdp, the stack's parameters, gradients and optimizer state are sharded across the "
                "processes (FSDP2, one unit per decoder layer), for a base model that does not fit one device. "
                "Both take the same shares of the same batches and make the same update"})
    work_dir: str | None = field(default=None, metadata={
        "help": "resume directory for checkpoints; a restarted Job resumes from the latest one here "
                "(default: a temporary directory, not resumable)"})
    work_store: str | None = field(default=None, metadata={
        "help": "store location mirroring this version's checkpoints and published marker, so that a retried "
                "Job (a new pod, an empty --work-dir) resumes, and one whose predecessor published reports it"})
    max_records: int | None = field(default=None, metadata={"help": "use at most the newest N records"})
    records_total: int | None = field(default=None, metadata={
        "help": "records at the location when this Job was created, recorded as recordsConsumed in the "
                "version's metadata: a tier re-created from the store does not train on them again"})
    agent: str | None = field(default=None, metadata={"help": "only records of this agent"})
    since: str | None = field(default=None, metadata={"help": "only records strictly after this RFC 3339 time"})
    exclude_window: list[str] = field(default_factory=list, metadata={
        "help": "quarantine: drop records timestamped within FROM/TO (RFC 3339, inclusive) from training and "
                "from the held-out slice, e.g. the window of an update the quality gate rejected; repeat",
        "repeat": True, "metavar": "FROM/TO"})
    min_reward: float | None = field(default=None, metadata={"help": "drop records whose reward is below this"})
    bad_lines: BadLines = field(default="reject", metadata={
        "help": "malformed record lines: reject the data set, or skip them with a warning"})
    eval_records: int = field(default=64, metadata={"help": "records used for the before/after loss"})
    log_every: int = field(default=1, metadata={"help": "steps between progress lines"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)"})
    holdout_fraction: float = field(default=0.1, metadata={
        "help": "share of records held out of training in every run (chosen by a hash of each record), "
                "in [0, 0.5]; the newest of them are the quality gate's held-out slice"})
    gate_max_regression: float | None = field(default=None, metadata={
        "help": "quality gate: allowed rate of forgetting, in [0, 1]: the new version is rejected when it "
                "forgets significantly more of the examples the served stack answers correctly (held-out "
                "slice, regression set); default: gate disabled (always accepted)"})
    regression_data: str | None = field(default=None, metadata={
        "help": "quality gate: a fixed regression set (same formats as --data), evaluated besides the "
                "held-out slice"})
    gate_significance: float = field(default=0.1, metadata={
        "help": "quality gate: level of the one-sided binomial test of forgetting, in (0, 1)"})
    replay_fraction: float = field(default=0.0, metadata={
        "help": "consolidation replay: share of the training mix made of stored older records (newest "
                "answer per question, chosen by surprise under the starting stack), in [0, 0.9]"})
    replay_budget: int = field(default=64, metadata={
        "help": "consolidation replay: stored questions rehearsed at most (all of them when the store holds fewer)"})
    screen_threshold: float | None = field(default=None, metadata={
        "help": "phases: reinforcement above which a component becomes SCREENED (the tier's plasticity); with "
                "--free-threshold, the version's statistics report its screened fraction and phase state"})
    free_threshold: float | None = field(default=None, metadata={
        "help": "phases: reinforcement below which a SCREENED component becomes FREE again (hysteresis)"})
    free_decay: float = field(default=0.0, metadata={
        "help": "plasticity: share of a FREE component's magnitude lost per --reference-interactions new "
                "records; the starting version decays by the records this run trains on (needs the thresholds)"})
    screened_decay: float = field(default=0.0, metadata={
        "help": "plasticity: the same for SCREENED components (at most --free-decay)"})
    reference_interactions: float = field(default=60.0, metadata={
        "help": "plasticity: records per reference hour, the unit the decay shares are given in"})
    energy_budget: float | None = field(default=None, metadata={
        "help": "homeostasis: largest squared Frobenius norm of the trained tier; beyond it FREE components "
                "are shed first (needs the thresholds); default unlimited"})
    plastic_rank: int | None = field(default=None, metadata={
        "help": "protection: keep the trained tier's LoRA A rows, all but the last PLASTIC_RANK, orthogonal to "
                "the input directions the --frozen tiers respond to, so the update leaves how the stack "
                "answers those inputs to the slower tiers; default: no protection"})
    gate_records: int = field(default=64, metadata={
        "help": "quality gate: records evaluated per set (the newest held-out ones; the newest regression ones)"})
    result_file: str | None = field(default=None, metadata={
        "help": "also write the result JSON here (e.g. /dev/termination-log)"})
    serve_swarm: str | None = field(default=None, metadata={
        "help": "compose ahead: once the gate accepts the version and it is published, compose --serve-stack "
                "into this Swarm's served adapters, where the model and torch already are, so serving the new "
                "version waits for no compose Job (the operator composes whatever differs)"})
    serve_stack: str | None = field(default=None, metadata={
        "help": "compose ahead: the agent's stack with the version this Job publishes, as `dynamiclora compose "
                "--stack` JSON"})
    serve_max_lora_rank: int | None = field(default=None, metadata={
        "help": "compose ahead: the vLLM pods' --max-lora-rank (a larger stack is truncated)"})
    serve_base_model_name: str | None = field(default=None, metadata={
        "help": "compose ahead: the base model name recorded in the served adapter_config.json"})

    def __post_init__(self) -> None:
        self._check_serve()
        checks = [
            (self.plastic_rank is None or self.plastic_rank >= 0,
             f"--plastic-rank must be >= 0, got {self.plastic_rank}"),
            (0.0 <= self.holdout_fraction <= 0.5,
             f"--holdout-fraction must be in [0, 0.5], got {self.holdout_fraction}"),
            (self.gate_max_regression is None or 0 <= self.gate_max_regression <= 1,
             f"--gate-max-regression must be in [0, 1], got {self.gate_max_regression}"),
            (self.gate_records >= 1, f"--gate-records must be >= 1, got {self.gate_records}"),
            (0 < self.gate_significance < 1,
             f"--gate-significance must be in (0, 1), got {self.gate_significance}"),
            (0 <= self.replay_fraction <= 0.9, f"--replay-fraction must be in [0, 0.9], got {self.replay_fraction}"),
            (self.replay_budget >= 0, f"--replay-budget must be >= 0, got {self.replay_budget}"),
            ((self.screen_threshold is None) == (self.free_threshold is None),
             "--screen-threshold and --free-threshold go together"),
            (self.screen_threshold is None or self.free_threshold is None
             or 0 <= self.free_threshold < self.screen_threshold <= 1,
             f"--free-threshold must be below --screen-threshold, both in [0, 1], got {self.free_threshold} "
             f"and {self.screen_threshold}"),
            (0 <= self.screened_decay <= self.free_decay <= 1,
             f"--screened-decay and --free-decay must satisfy 0 <= screened <= free <= 1, got "
             f"{self.screened_decay} and {self.free_decay}"),
            (self.reference_interactions > 0,
             f"--reference-interactions must be > 0, got {self.reference_interactions}"),
            (self.energy_budget is None or self.energy_budget > 0,
             f"--energy-budget must be > 0, got {self.energy_budget}"),
            ((self.free_decay == 0 and self.energy_budget is None) or self.screen_threshold is not None,
             "--free-decay and --energy-budget act on phases: give --screen-threshold and --free-threshold"),
            (self.rank >= 1, f"--rank must be >= 1, got {self.rank}"),
            (self.alpha > 0, f"--alpha must be > 0, got {self.alpha}"),
            (bool(self.target_modules), "--target-modules must name at least one module"),
            (0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.lr_warmdown < 1, f"--lr-warmdown must be in [0, 1), got {self.lr_warmdown}"),
            (0 <= self.lr_warmup <= 0.5, f"--lr-warmup must be in [0, 0.5], got {self.lr_warmup}"),
            (self.steps is None or self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.max_seq_len >= 2, f"--max-seq-len must be >= 2, got {self.max_seq_len}"),
            (self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {self.checkpoint_every}"),
            (self.records_total is None or self.records_total >= 0,
             f"--records-total must be >= 0, got {self.records_total}"),
            (self.max_records is None or self.max_records >= 1,
             f"--max-records must be >= 1, got {self.max_records}"),
            (self.eval_records >= 1, f"--eval-records must be >= 1, got {self.eval_records}"),
            (self.log_every >= 1, f"--log-every must be >= 1, got {self.log_every}"),
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
            (self.bad_lines in ("reject", "skip"), f"--bad-lines must be reject or skip, got {self.bad_lines}"),
            (self.strategy in ("ddp", "fsdp"), f"--strategy must be ddp or fsdp, got {self.strategy}"),
            (self.ewc_lambda >= 0, f"--ewc-lambda must be >= 0, got {self.ewc_lambda}"),
            (self.ewc_records >= 1, f"--ewc-records must be >= 1, got {self.ewc_records}"),
            (self.ewc_lambda == 0 or self.strategy == "ddp",
             "--ewc-lambda works on whole parameters: not with --strategy fsdp"),
            (self.anchor_weight >= 0 and math.isfinite(self.anchor_weight),
             f"--anchor-weight must be a finite number >= 0, got {self.anchor_weight}"),
            (self.anchor_data is None or self.anchor_weight == 0 or self.strategy == "ddp",
             "--anchor-data adds its gradient to whole parameters: not with --strategy fsdp"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def _check_serve(self) -> None:
        if not (self.serve_swarm is None) == (self.serve_stack is None) == (self.serve_max_lora_rank is None):
            raise ValueError("--serve-swarm, --serve-stack and --serve-max-lora-rank go together")
        if self.serve_max_lora_rank is not None and self.serve_max_lora_rank < 1:
            raise ValueError(f"--serve-max-lora-rank must be >= 1, got {self.serve_max_lora_rank}")
        if self.serve_stack is not None:
            StackSpec.from_text(self.serve_stack)


@dataclass
class ConsolidateConfig:
    """Options of ``dynamiclora consolidate`` (migration or consensus)."""

    mode: Literal["migrate", "consensus"] = field(metadata={
        "help": "migrate: move stable components of --source into --dest; consensus: combine the "
                "--agent tiers into the shared --dest tier"})
    dest: str = field(metadata={"help": "the slower (or shared) tier, STORE/NAMESPACE/TIER; gets a new version",
                                "metavar": "REF"})
    source: str | None = field(default=None, metadata={
        "help": "migrate: the faster tier STORE/NAMESPACE/TIER whose recent versions are judged", "metavar": "REF"})
    agent_tier: list[str] = field(default_factory=list, metadata={
        "help": "consensus: one agent's tier STORE/NAMESPACE/TIER; repeat per agent", "repeat": True,
        "metavar": "REF"})
    base_model: str | None = field(default=None, metadata={
        "help": "base model recorded in the written adapters (default: the one recorded in the inputs)"})
    window: int | None = field(default=None, metadata={
        "help": "migrate: source versions judged, newest last (default: what the detector needs)"})
    method: Literal["subspace", "autocorrelation", "recurrence"] = field(default="subspace", metadata={
        "help": "migrate: stability detector; recurrence judges the answers --records taught the source tier "
                "and trains the destination on the stable ones (distillation) instead of moving components"})
    threshold: float = field(default=0.9, metadata={"help": "migrate: stability score needed, in (0, 1]"})
    min_consecutive: int = field(default=2, metadata={"help": "migrate: consecutive windows above threshold"})
    window_length: int = field(default=3, metadata={"help": "migrate: versions per autocorrelation window"})
    max_migrations: int = field(default=8, metadata={"help": "migrate: components moved per run"})
    max_energy_fraction: float = field(default=0.5, metadata={
        "help": "migrate: share of the source tier's energy moved per run, in (0, 1]"})
    min_energy_fraction: float = field(default=0.01, metadata={
        "help": "migrate: components carrying less than this share of their module's energy are never judged "
                "stable, in [0, 1]"})
    emergency_bypass: bool = field(default=True, metadata={
        "help": "migrate: let critical stable components bypass the limits"})
    bypass_min_stability: float | None = field(default=None, metadata={
        "help": "migrate: a stable component whose newest stability score reaches this is critical, in (0, 1]; "
                "default: only very energetic components are"})
    dest_rank: int | None = field(default=None, metadata={
        "help": "rank the destination is stored at (default: its current rank, else the inputs' rank)"})
    rule: Literal["resonance", "mean", "ties"] = field(default="resonance", metadata={
        "help": "consensus: combination rule"})
    weights: list[float] | None = field(default=None, metadata={
        "help": "consensus: trust weight per --agent-tier (space separated; default uniform)"})
    outlier_threshold: float | None = field(default=None, metadata={
        "help": "consensus: agents whose tier aligns with the first consensus below this cosine, in [-1, 1], "
                "are left out of it; default: none are"})
    update_agents: bool = field(default=True, metadata={
        "help": "consensus: also publish each agent tier minus the consensus, so every agent's stack "
                "output is unchanged while the shared part moves up"})
    records: list[str] = field(default_factory=list, metadata={
        "help": "recurrence: the source agent's interaction records (.jsonl, directory or s3://); repeat",
        "repeat": True, "metavar": "SOURCE"})
    exclude_window: list[str] = field(default_factory=list, metadata={
        "help": "recurrence: quarantined records (RFC 3339 FROM/TO, inclusive) never move up; repeat",
        "repeat": True, "metavar": "FROM/TO"})
    holdout_fraction: float | None = field(default=None, metadata={
        "help": "recurrence: the source tier's held-out share (by record hash), never trained on here either "
                "(default 0.1)"})
    model_dir: str | None = field(default=None, metadata={
        "help": "recurrence: directory of the base model, or an s3:// prefix"})
    frozen: list[str] = field(default_factory=list, metadata={
        "help": "recurrence: a tier served beneath the destination, STORE/NAMESPACE/TIER/vNNNNNN, active and "
                "frozen while the destination learns; repeat", "repeat": True, "metavar": "REF"})
    distill_steps: int | None = field(default=None, metadata={
        "help": "recurrence: optimizer steps of the destination (default 200)"})
    distill_lr: float | None = field(default=None, metadata={
        "help": "recurrence: learning rate of the destination (default 1e-3)"})
    distill_batch_size: int | None = field(default=None, metadata={"help": "recurrence: records per step (default 8)"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)"})
    dry_run: bool = field(default=False, metadata={"help": "decide and report; publish nothing"})
    anchor_data: str | None = field(default=None, metadata={
        "help": "recurrence: answers kept steady (as dynamiclora train --anchor-data): the destination keeps the "
                "answers of the tiers beneath it to these prompts, the source's refit those of the stack"})
    anchor_weight: float = field(default=1.0, metadata={
        "help": "recurrence: weight of the --anchor-data KL term in the source's refit (0: off)"})
    gate_base_model: str | None = field(default=None, metadata={
        "help": "quality gate: base model directory (or s3:// prefix) to evaluate the stacks on (default: gate "
                "disabled)"})
    gate_data: list[str] = field(default_factory=list, metadata={
        "help": "quality gate: interaction records to evaluate on (.jsonl, directory or s3://); repeat "
                "for several", "repeat": True, "metavar": "SOURCE"})
    gate_regression: list[str] = field(default_factory=list, metadata={
        "help": "quality gate: a fixed regression set (.jsonl, directory or s3://), judged apart from --gate-data "
                "and whole (up to --gate-records questions), whatever the age of its records; repeat for several",
        "repeat": True, "metavar": "SOURCE"})
    gate_frozen: list[str] = field(default_factory=list, metadata={
        "help": "quality gate: another (unchanged) tier of the stack, STORE/NAMESPACE/TIER[/v000007]; "
                "repeat for several", "repeat": True, "metavar": "REF"})
    gate_max_regression: float = field(default=0.05, metadata={
        "help": "quality gate: allowed rate of forgetting examples a stack answered correctly, in [0, 1]"})
    gate_records: int = field(default=64, metadata={
        "help": "quality gate: newest questions evaluated, each by its newest answer"})
    gate_significance: float = field(default=0.1, metadata={
        "help": "quality gate: level of the one-sided binomial test of forgetting, in (0, 1)"})
    result_file: str | None = field(default=None, metadata={
        "help": "also write the result JSON here (e.g. /dev/termination-log)"})

    def __post_init__(self) -> None:
        if self.mode == "migrate" and not self.source:
            raise ValueError("--mode migrate needs --source")
        if self.mode == "consensus" and len(self.agent_tier) < 1:
            raise ValueError("--mode consensus needs at least one --agent-tier")
        if self.weights is not None and len(self.weights) != len(self.agent_tier):
            raise ValueError(f"--weights has {len(self.weights)} values for {len(self.agent_tier)} --agent-tier")
        if not 0 <= self.min_energy_fraction <= 1:
            raise ValueError(f"--min-energy-fraction must be in [0, 1], got {self.min_energy_fraction}")
        if self.bypass_min_stability is not None and not 0 < self.bypass_min_stability <= 1:
            raise ValueError(f"--bypass-min-stability must be in (0, 1], got {self.bypass_min_stability}")
        if self.outlier_threshold is not None and not -1 <= self.outlier_threshold <= 1:
            raise ValueError(f"--outlier-threshold must be in [-1, 1], got {self.outlier_threshold}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"--window must be >= 1, got {self.window}")
        if self.dest_rank is not None and self.dest_rank < 1:
            raise ValueError(f"--dest-rank must be >= 1, got {self.dest_rank}")
        if not 0 <= self.gate_max_regression <= 1:
            raise ValueError(f"--gate-max-regression must be in [0, 1], got {self.gate_max_regression}")
        if self.gate_records < 1:
            raise ValueError(f"--gate-records must be >= 1, got {self.gate_records}")
        if not 0 < self.gate_significance < 1:
            raise ValueError(f"--gate-significance must be in (0, 1), got {self.gate_significance}")
        if self.method == "recurrence" and self.mode == "migrate" and not (self.records and self.model_dir):
            raise ValueError("--method recurrence needs --records and --model-dir")
        if any(v is not None and not v > 0 for v in (self.distill_steps, self.distill_batch_size, self.distill_lr)):
            raise ValueError("--distill-steps, --distill-batch-size and --distill-lr must be positive")
        if self.holdout_fraction is not None and not 0 <= self.holdout_fraction <= 0.5:
            raise ValueError(f"--holdout-fraction must be in [0, 0.5], got {self.holdout_fraction}")
        if self.gate_base_model and not (self.gate_data or self.gate_regression):
            raise ValueError("--gate-base-model needs at least one --gate-data or --gate-regression source to "
                             "evaluate on")


@dataclass(frozen=True)
class StackSpec:
    """One agent's stack to compose: the exact tier versions, fastest first, and the key they hash to.

    The operator decides it (tier versions settled against half-applied migrations) and passes it to
    ``dynamiclora compose`` as one JSON ``--stack`` value; ``key`` names the composed adapter's folder.
    """

    agent: str
    key: str
    label: str
    tiers: tuple[tuple[str, str], ...]  # (level, STORE/NAMESPACE/TIER/vNNNNNN)

    def to_text(self) -> str:
        """The ``--stack`` value (compact JSON)."""
        doc = {"agent": self.agent, "key": self.key, "label": self.label, "tiers": [list(t) for t in self.tiers]}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> StackSpec:
        """Parse a ``--stack`` value; ValueError says what is wrong."""
        try:
            doc = json.loads(text)
            spec = cls(str(doc["agent"]), str(doc["key"]), str(doc["label"]),
                       tuple((str(level), str(ref)) for level, ref in doc["tiers"]))  # fmt: skip
        except (ValueError, KeyError, TypeError) as e:
            shape = "{agent, key, label, tiers: [[level, ref]]}"
            raise ValueError(f"--stack {text[:200]!r}: expected {shape} ({e})") from None
        if not _KEY.fullmatch(spec.key) or not spec.tiers or not spec.agent or "/" in spec.agent:
            raise ValueError(f"--stack {text[:200]!r}: needs an agent name, a hexadecimal key and at least one tier")
        return spec


_KEY = re.compile(r"[0-9a-f]{8,64}")


@dataclass
class ComposeConfig:
    """Options of ``dynamiclora compose`` (the served adapters of one Swarm's agents)."""

    store: str = field(metadata={"help": "checkpoint store URI the served adapters go to (file:///path or "
                                         "s3://bucket/prefix), under served/NAMESPACE/SWARM/AGENT/KEY"})
    namespace: str = field(metadata={"help": "the Swarm's namespace"})
    swarm: str = field(metadata={"help": "the Swarm's name"})
    stack: list[str] = field(default_factory=list, metadata={
        "help": "one agent's stack as JSON {agent, key, label, tiers: [[level, REF], ...]}, fastest tier first; "
                "repeat for several", "repeat": True, "metavar": "JSON"})
    max_lora_rank: int = field(default=64, metadata={
        "help": "largest rank the vLLM pods accept: a composed stack above it is truncated (SVD)"})
    base_model_name: str = field(default="", metadata={"help": "base model name recorded in adapter_config.json"})
    model_dir: str | None = field(default=None, metadata={
        "help": "base model weights (a directory or an s3:// prefix): when readable, each adapter gets the "
                "fingerprint the hot-swap verifies"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)"})
    result_file: str | None = field(default=None, metadata={
        "help": "also write the result JSON here (e.g. /dev/termination-log)"})

    def __post_init__(self) -> None:
        if not self.stack:
            raise ValueError("--stack: at least one stack to compose")
        if self.max_lora_rank < 1:
            raise ValueError(f"--max-lora-rank must be >= 1, got {self.max_lora_rank}")
        specs = self.stacks()
        agents = [s.agent for s in specs]
        if len(set(agents)) != len(agents):
            raise ValueError(f"--stack: an agent appears twice ({sorted(agents)})")

    def stacks(self) -> list[StackSpec]:
        """The parsed ``--stack`` values."""
        return [StackSpec.from_text(t) for t in self.stack]
