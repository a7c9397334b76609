"""Validate custom-resource YAML files against the API models, reporting field paths and lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dynamiclora import API_VERSION, GROUP
from dynamiclora.api.policy import MigrationPolicy
from dynamiclora.api.swarm import Swarm
from dynamiclora.api.tier import LoRATier

MODELS: dict[str, type[BaseModel]] = {"Swarm": Swarm, "LoRATier": LoRATier, "MigrationPolicy": MigrationPolicy}


@dataclass(frozen=True)
class Problem:
    """One validation problem, located in a file."""

    file: str
    line: int
    document: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f"{self.path}: " if self.path else ""
        return f"{where}: {field}{self.message}"


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int:
    """1-based line of the deepest YAML node found along ``loc``."""
    line = node.start_mark.line + 1 if node is not None else 0
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                # The key is missing or unknown: point at the key itself when it exists.
                key = next((k for k, _ in node.value if getattr(k, "value", None) == part), None)
                return key.start_mark.line + 1 if key is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate_document(doc: Any, node: yaml.Node | None, file: str, index: int) -> list[Problem]:
    """Problems of one YAML document (empty when it is a valid DynamicLoRA object)."""
    if not isinstance(doc, dict):
        return [Problem(file, _line_of(node, ()), index, "", "document is not a mapping")]
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    ours = str(api_version).startswith(f"{GROUP}/") or kind in MODELS
    if not ours and api_version and kind:
        return []  # Secrets, ConfigMaps ... beside our objects are the API server's business.
    if api_version != API_VERSION or kind not in MODELS:
        return [
            Problem(
                file,
                _line_of(node, ("kind",)),
                index,
                "kind",
                f"not a DynamicLoRA object (apiVersion {api_version!r}, kind {kind!r}); expected apiVersion "
                f"{API_VERSION} and kind one of {', '.join(MODELS)}",
            )
        ]
    try:
        MODELS[kind].model_validate(doc)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(Problem(file, _line_of(node, loc), index, _dotted(loc), msg))
        return problems
    return []


def validate_text(text: str, file: str = "<string>") -> list[Problem]:
    """Problems of every document of a YAML stream."""
    try:
        nodes = [n for n in yaml.compose_all(text, Loader=yaml.SafeLoader) if n is not None]
        docs_nodes = [(yaml.SafeLoader("").construct_document(n), n) for n in nodes]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        return [Problem(file, mark.line + 1 if mark else 0, 0, "", f"invalid YAML: {err}")]
    problems: list[Problem] = []
    if not docs_nodes:
        return [Problem(file, 0, 0, "", "no YAML document found")]
    for i, (doc, node) in enumerate(docs_nodes):
        problems.extend(validate_document(doc, node, file, i))
    return problems


def validate_files(paths: list[str]) -> list[Problem]:
    """Problems of every file (unreadable files are problems too)."""
    problems: list[Problem] = []
    for p in paths:
        try:
            text = Path(p).read_text()
        except OSError as err:
            problems.append(Problem(p, 0, 0, "", f"cannot read file: {err.strerror}"))
            continue
        problems.extend(validate_text(text, p))
    return problems
