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
import sys
from pathlib import Path

from dynamiclora_dev.localcluster.image_env import REPO_ROOT, install_checkout, pip, require_absent, run
from dynamiclora_dev.localcluster.image_env import env_dir as _env_dir

REQUIREMENTS = REPO_ROOT / "images" / "operator" / "requirements.txt"
FORBIDDEN = ("torch", "transformers", "peft", "safetensors", "dynamiclora_dev")  # what the operator image does not have


def env_dir() -> Path:
    """Where the environment lives (``$DYNAMICLORA_OPERATOR_VENV`` overrides)."""
    return _env_dir("DYNAMICLORA_OPERATOR_VENV", "operator-venv")


@functools.cache
def ensure_operator_env() -> Path:
    """Build or refresh the environment (once per process); returns its Python interpreter."""
    venv = env_dir()
    py = venv / "bin" / "python"
    if not REQUIREMENTS.is_file():
        raise FileNotFoundError(f"{REQUIREMENTS} not found: the operator environment needs a source checkout")
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    stamp = venv / f".requirements-{digest}"
    if not py.exists():
        run([sys.executable, "-m", "venv", str(venv)], f"creating {venv}")
    if not stamp.exists():
        run([*pip(py), "install", "-r", str(REQUIREMENTS), "setuptools>=77", "wheel"],
            "installing the operator image's requirements")  # fmt: skip
        for old in venv.glob(".requirements-*"):
            old.unlink()
        stamp.touch()
    install_checkout(py, "installing dynamiclora into the operator environment")
    require_absent(py, FORBIDDEN, "operator")
    return py
