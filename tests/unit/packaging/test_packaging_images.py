"""The Dockerfiles under images/: entrypoints are real CLI commands, bases pinned, users non-root."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from dynamiclora.cli import build_parser
from dynamiclora_dev.localcluster.images import image_table, repository

ROOT = Path(__file__).resolve().parents[3]
IMAGES = ("operator", "trainer")
ML_PACKAGES = {"torch", "transformers", "peft", "safetensors"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile with ARG defaults substituted into FROM (enough for these checks)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "ARG" and not stages and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        elif op == "FROM":
            words = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], rest).split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{path}: {op} before the first FROM"
            stages[-1].instructions.append((op, rest))
    return stages


def exec_form(path: Path, stage: Stage, op: str) -> list[str]:
    values = [rest for o, rest in stage.instructions if o == op]
    assert values, f"{path}: the final stage has no {op}"
    value = json.loads(values[-1])  # shell form would make the CLI a child of sh (signals get lost)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{path}: {op} must be exec form"
    return value


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_and_cmd_are_cli_commands(image: str, parser: argparse.ArgumentParser) -> None:
    path = ROOT / "images" / image / "Dockerfile"
    final = parse_dockerfile(path)[-1]
    assert exec_form(path, final, "ENTRYPOINT") == ["dynamiclora"]
    cmd = exec_form(path, final, "CMD")
    commands = subcommands(parser)
    assert cmd[0] in commands, f"{path}: CMD names `dynamiclora {cmd[0]}`, not one of {sorted(commands)}"
    try:
        parser.parse_args(cmd)  # flags and values must parse too, not just the command name
    except SystemExit as exc:
        pytest.fail(f"{path}: `dynamiclora {' '.join(cmd)}` does not parse (exit {exc.code})")


def test_job_commands_exist_for_the_trainer(parser: argparse.ArgumentParser) -> None:
    # builders/jobs.py runs the trainer image as `dynamiclora train ...` and `dynamiclora consolidate ...`.
    source = (ROOT / "operator" / "dynamiclora" / "builders" / "jobs.py").read_text(encoding="utf-8")
    assert '"command": ["dynamiclora"]' in source
    used = set(re.findall(r'args = \[\s*"(\w+)"', source))
    assert used, "no Job command found in builders/jobs.py (did its args lists change shape?)"
    assert used <= set(subcommands(parser)), f"Jobs run {sorted(used)}; the CLI has {sorted(subcommands(parser))}"


def test_chart_deployment_command_matches_the_operator_image(parser: argparse.ArgumentParser) -> None:
    template = (ROOT / "charts" / "dynamiclora" / "templates" / "deployment.yaml").read_text(encoding="utf-8")
    assert 'command: ["dynamiclora"]' in template
    # The chart's args, with default values substituted, must parse like the image's CMD.
    args = ["run", "--metrics-port=8080", "--liveness=http://0.0.0.0:8081/healthz", "--namespace=team"]
    assert "- run" in template and "--metrics-port=" in template and "--liveness=" in template
    assert "--namespace=" in template
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"`dynamiclora {' '.join(args)}` (the chart's Deployment) does not parse (exit {exc.code})")


@pytest.mark.parametrize("image", IMAGES)
def test_multistage_pinned_nonroot(image: str) -> None:
    path = ROOT / "images" / image / "Dockerfile"
    stages = parse_dockerfile(path)
    assert len(stages) >= 2, f"{path}: expected a multi-stage build"
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue
        pinned = "@sha256:" in stage.base or re.search(r":\d+\.\d+\.\d+[-\w.]*$", stage.base)
        assert pinned, f"{path}: base {stage.base!r} is not pinned to an exact version or digest"
    users = [rest for op, rest in stages[-1].instructions if op == "USER"]
    assert users, f"{path}: the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000, f"{path}: runs as {users[-1]!r}"
    for stage in stages:
        for op, rest in stage.instructions:
            if op == "COPY" and "--from=" not in rest:
                for src in rest.split()[:-1]:
                    assert (ROOT / src).exists(), f"{path}: COPY source {src} is missing from the repository"


def test_image_names_match_the_local_executor_and_chart() -> None:
    table = image_table()
    for image in IMAGES:
        assert f"ghcr.io/dynamiclora/{image}" in table
    values = yaml.safe_load((ROOT / "charts" / "dynamiclora" / "values.yaml").read_text(encoding="utf-8"))
    assert repository(values["image"]["repository"]) == "ghcr.io/dynamiclora/operator"


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_operator_requirements_match_pyproject() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    wanted = {_requirement_name(d): d.replace(" ", "") for d in deps if _requirement_name(d) not in ML_PACKAGES}
    lines = (ROOT / "images" / "operator" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    got = {_requirement_name(x): x.replace(" ", "") for x in (ln.split("#")[0].strip() for ln in lines) if x}
    assert got == wanted


BLOCKER = """
import importlib.abc, pkgutil, sys
BLOCKED = {"torch", "transformers", "peft", "safetensors", "vllm"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the operator image has no {name}")
        return None
sys.meta_path.insert(0, Block())
from dynamiclora.cli import build_parser
build_parser()
import dynamiclora.controllers, dynamiclora.kube, dynamiclora.metrics, dynamiclora.serving.hotswap
for mod in pkgutil.walk_packages(dynamiclora.controllers.__path__, "dynamiclora.controllers."):
    __import__(mod.name)
print("ok")
"""


def test_operator_modules_import_without_the_ml_stack() -> None:
    # The operator image installs images/operator/requirements.txt only; importing torch there would crash.
    proc = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_the_harness_is_not_part_of_the_shipped_package() -> None:
    from setuptools import find_namespace_packages

    # What `pip install .` (both Dockerfiles) packages: pyproject's [tool.setuptools.packages.find].
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = find_namespace_packages(where=str(ROOT / find["where"][0]), exclude=["*.__pycache__"])
    assert find["where"] == ["operator"] and "dynamiclora.controllers" in shipped
    assert not [p for p in shipped if "dev" in p.split(".")[0] or p.split(".")[-1] in ("localcluster", "demo")]
    for image in IMAGES:  # and the build context of each image holds nothing else of the repository
        ignore = (ROOT / "images" / image / "Dockerfile.dockerignore").read_text()
        assert "!dev" not in ignore and "!operator/**" in ignore
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert commands.isdisjoint({"demo", "cluster"}) and {"run", "train", "consolidate"} <= commands
