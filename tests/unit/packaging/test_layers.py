"""The package's layers, checked as a contract rather than by eye (issue 16).

``api`` <- ``builders`` <- ``controllers``; ``memory``, ``storage`` and ``serving`` are leaves; ``memory``
never touches Kubernetes; the product never imports the test harness (``localcluster``, ``demo``); no
two top-level parts import each other. Every ``import`` counts, lazy ones inside functions included.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3] / "operator" / "dynamiclora"
HARNESS = {"localcluster", "demo"}
# What each part may import besides itself ("(root)" is dynamiclora/__init__: names and constants).
ALLOWED: dict[str, set[str]] = {
    "api": {"(root)"},
    "memory": {"api"},
    "storage": {"api", "(root)"},
    "serving": {"storage", "api", "(root)", "tinymodel"},
    "training": {"memory", "storage", "serving", "api", "(root)", "tinymodel"},
    "builders": {"api", "(root)", "kube", "settings", "training", "serving", "storage"},
    "kube": {"(root)"},
    "settings": {"(root)"},
    "metrics": {"serving", "(root)"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of the package ``path`` imports (absolute or relative, at any depth)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                out.add(node.module)
    return out


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(part -> parts it imports, part -> third-party top-level modules it imports)."""
    parts: dict[str, set[str]] = defaultdict(set)
    external: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        part = _part(_module(path))
        for imported in _imports(path):
            if imported.startswith("dynamiclora"):
                if _part(imported) != part:
                    parts[part].add(_part(imported))
            else:
                external[part].add(imported.split(".")[0])
    return parts, external


def test_each_layer_imports_only_what_is_below_it() -> None:
    parts, _ = _graph()
    wrong = {p: sorted(parts[p] - allowed) for p, allowed in ALLOWED.items() if parts[p] - allowed}
    assert wrong == {}


def test_the_product_never_imports_the_test_harness() -> None:
    parts, _ = _graph()
    assert {p for p, deps in parts.items() if deps & HARNESS and p not in HARNESS} == set()


def test_the_memory_core_never_touches_kubernetes() -> None:
    _, external = _graph()
    assert external["memory"] & {"kopf", "kubernetes", "kubernetes_asyncio"} == set()


def test_no_two_parts_import_each_other() -> None:
    parts, _ = _graph()
    seen: set[tuple[str, ...]] = set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(parts[node]):
            if nxt in path:
                seen.add(tuple(path[path.index(nxt):]))
            elif len(path) < 12:
                walk(nxt, [*path, nxt])

    for start in list(parts):
        walk(start, [start])
    assert seen == set()
