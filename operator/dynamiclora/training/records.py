"""Interaction records: the JSONL format agents' experience is stored in, and its reader.

One JSON object per line (blank lines are ignored)::

    {"agent": "alice", "timestamp": "2025-01-02T03:04:05Z", "prompt": "...", "response": "...",
     "reward": 1.0, "feedback": "good", "id": "r-1", "metadata": {...}}
    {"agent": "alice", "timestamp": "2025-01-02T03:04:05+01:00",
     "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

See docs/training.md for the field reference. The reader reports every malformed line with its file
and line number, and either rejects the data set (default) or skips those lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dynamiclora.storage.base import RECORDS_SUFFIX, StoreError
from dynamiclora.storage.schemes import local_path, record_source

BadLinesMode = Literal["reject", "skip"]


class ChatMessage(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class InteractionRecord(BaseModel):
    """One interaction of one agent: prompt and response, or a chat transcript."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, description="name of the agent that had the interaction")
    timestamp: datetime = Field(description="RFC 3339 time with an offset, e.g. 2025-01-02T03:04:05Z")
    prompt: str | None = Field(default=None, description="the input (with response)")
    response: str | None = Field(default=None, description="the output to learn (with prompt)")
    messages: list[ChatMessage] | None = Field(default=None, description="chat transcript instead")
    feedback: str | None = Field(default=None, description="free-text feedback")
    reward: float | None = Field(default=None, description="scalar feedback; higher is better")
    id: str | None = Field(default=None, description="optional unique id (for de-duplication)")
    metadata: dict[str, Any] = Field(default_factory=dict, description="anything else")

    @field_validator("timestamp")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("timestamp needs a UTC offset (RFC 3339), e.g. 2025-01-02T03:04:05Z")
        return v

    @field_validator("reward")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("reward must be a finite number")
        return v

    @model_validator(mode="after")
    def _one_shape(self) -> InteractionRecord:
        has_pair = self.prompt is not None or self.response is not None
        if has_pair and self.messages is not None:
            raise ValueError("give either prompt+response or messages, not both")
        if self.messages is None:
            if self.prompt is None or self.response is None:
                raise ValueError("needs both prompt and response (or a messages list)")
            if not self.response.strip():
                raise ValueError("response is empty: nothing to learn")
        elif not any(m.role == "assistant" and m.content.strip() for m in self.messages):
            raise ValueError("messages need at least one non-empty assistant turn to learn from")
        return self


def record_key(record: InteractionRecord) -> str:
    """What the record asks: its prompt, or its transcript up to the last assistant turn.

    Two records with the same key answer the same question; the newer answer supersedes the older one.
    """
    if record.messages is None:
        return f"{record.agent}\0{(record.prompt or '').strip()}"
    last = max(i for i, m in enumerate(record.messages) if m.role == "assistant")
    turns = [(m.role, m.content.strip()) for m in record.messages[:last]]
    return f"{record.agent}\0" + json.dumps(turns, ensure_ascii=False)


def record_answer(record: InteractionRecord) -> str:
    """The answer the record teaches: its response, or its last assistant turn."""
    if record.messages is None:
        return (record.response or "").strip()
    return [m.content for m in record.messages if m.role == "assistant"][-1].strip()


@dataclass(frozen=True)
class BadLine:
    """A line that could not be parsed."""

    source: str
    line: int
    error: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.error}"


@dataclass(frozen=True)
class SourcedRecord:
    """A record with where it came from."""

    source: str
    line: int
    record: InteractionRecord


class RecordsError(ValueError):
    """The data set cannot be used; the message names the file and line(s)."""


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_line(text: str) -> InteractionRecord:
    """Parse one JSONL line; raises ``ValueError`` with a short explanation."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
    try:
        return InteractionRecord.model_validate(doc)
    except ValidationError as e:
        raise ValueError(_explain(e)) from None


def parse_lines(source: str, data: bytes) -> tuple[list[SourcedRecord], list[BadLine]]:
    """Parse the bytes of one JSONL file named ``source``."""
    good: list[SourcedRecord] = []
    bad: list[BadLine] = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.append(BadLine(source, n, f"not UTF-8 ({e.reason} at byte {e.start})"))
            continue
        if not text.strip():
            continue
        try:
            good.append(SourcedRecord(source, n, parse_line(text)))
        except ValueError as e:
            bad.append(BadLine(source, n, str(e)))
    return good, bad


def iter_sources(data: str, s3_client: Any = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` of every JSONL file of ``data``, through the storage scheme registry.

    Args:
        data: a file or an object (``s3://bucket/key.jsonl``), read whatever its name, or a folder or
            prefix (every ``*.jsonl`` below it, sorted): :func:`dynamiclora.storage.schemes.record_source`.
        s3_client: boto3 client for S3 sources (default: from the AWS_* environment).

    Raises:
        RecordsError: when the source does not exist or cannot be read.
    """
    try:
        source = record_source(data, s3_client)
        objects = source.objects()
    except (ValueError, StoreError) as e:
        raise RecordsError(f"data source {data}: {e}") from e
    local = local_path(data)
    missing = not local.exists() if local is not None else data.endswith(RECORDS_SUFFIX)  # one named object
    if not objects and missing:
        raise RecordsError(f"data source {data}: no such file or directory")
    for obj in objects:
        try:
            yield obj.uri, b"".join(source.chunks(obj))
        except StoreError as e:
            raise RecordsError(f"data source {obj.uri}: {e}") from e


def read_records(
    sources: Iterable[tuple[str, bytes]], bad_lines: BadLinesMode = "reject", max_report: int = 20
) -> tuple[list[SourcedRecord], list[BadLine]]:
    """Parse every source; reject the whole data set on a bad line unless ``bad_lines == 'skip'``.

    Returns:
        The good records (in source order) and the skipped bad lines.

    Raises:
        RecordsError: in ``reject`` mode when any line is malformed; lists up to ``max_report`` of them.
    """
    good: list[SourcedRecord] = []
    bad: list[BadLine] = []
    for name, data in sources:
        g, b = parse_lines(name, data)
        good += g
        bad += b
    if bad and bad_lines == "reject":
        shown = "\n  ".join(str(b) for b in bad[:max_report])
        more = f"\n  ... and {len(bad) - max_report} more" if len(bad) > max_report else ""
        raise RecordsError(
            f"{len(bad)} malformed record line(s) (use --bad-lines skip to ignore them):\n  {shown}{more}"
        )
    return good, bad
