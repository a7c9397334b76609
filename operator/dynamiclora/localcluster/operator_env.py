"""The operator's environment as its image builds it, for the local cluster, the e2e and the demo.

``images/operator/Dockerfile`` installs ``images/operator/requirements.txt`` into a fresh virtualenv,
then the package with ``--no-deps``: no torch, transformers or peft. The operator the e2e and the demo
run comes from a virtualenv built the same way (``~/.cache/dynamiclora/operator-venv``), so an import of
the ML stack anywhere in the operator's process fails there as it would in the shipped image. The
requirements are installed once per content of the requirements file; the package is installed again at
each start (a few seconds) so that the operator runs the code of this checkout.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
REQUIREMENTS = REPO_ROOT / "images" / "operator" / "requirements.txt"
FORBIDDEN = ("torch", "transformers", "peft", "safetensors")  # what the operator image does not have


class OperatorEnvError(RuntimeError):
    """The operator's environment could not be built."""


def env_dir() -> Path:
    """Where the environment lives (``$DYNAMICLORA_OPERATOR_VENV`` overrides)."""
    default = Path.home() / ".cache" / "dynamiclora" / "operator-venv"
    return Path(os.environ.get("DYNAMICLORA_OPERATOR_VENV") or default)


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise OperatorEnvError(f"{what} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


@functools.cache
def ensure_operator_env() -> Path:
    """Build or refresh the environment (once per process); returns its Python interpreter."""
    venv = env_dir()
    py = venv / "bin" / "python"
    if not REQUIREMENTS.is_file():
        raise OperatorEnvError(f"{REQUIREMENTS} not found: the operator environment needs a source checkout")
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    stamp = venv / f".requirements-{digest}"
    pip = [str(py), "-m", "pip", "--disable-pip-version-check", "-q"]
    if not py.exists():
        _run([sys.executable, "-m", "venv", str(venv)], f"creating {venv}")
    if not stamp.exists():
        _run([*pip, "install", "-r", str(REQUIREMENTS), "setuptools>=77", "wheel"],
             "installing the operator image's requirements")  # fmt: skip
        for old in venv.glob(".requirements-*"):
            old.unlink()
        stamp.touch()
    # The image installs the package, not a link to the sources; no build isolation: setuptools is here.
    # A stale build/ folder could carry deleted modules into the wheel.
    shutil.rmtree(REPO_ROOT / "build", ignore_errors=True)
    _run([*pip, "install", "--no-deps", "--no-build-isolation", "--force-reinstall", str(REPO_ROOT)],
         "installing dynamiclora into the operator environment")  # fmt: skip
    check = f"import importlib.util as u, sys; sys.exit([m for m in {FORBIDDEN!r} if u.find_spec(m)] != [])"
    if subprocess.run([str(py), "-c", check]).returncode != 0:
        raise OperatorEnvError(f"{venv} has one of {FORBIDDEN}: it is not the operator image's environment")
    return py
