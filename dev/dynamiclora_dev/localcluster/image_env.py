"""What the trainer and operator image environments share: where they live, how the checkout is installed
into them, and the check that they lack what their image lacks (see ``trainer_env.py``, ``operator_env.py``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


class ImageEnvError(RuntimeError):
    """An image environment could not be built."""


def env_dir(variable: str, name: str) -> Path:
    """``$variable`` or ``~/.cache/dynamiclora/<name>``."""
    return Path(os.environ.get(variable) or Path.home() / ".cache" / "dynamiclora" / name)


def run(argv: Sequence[str], what: str, timeout: float = 1800) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise ImageEnvError(f"{what} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def pip(py: Path) -> list[str]:
    return [str(py), "-m", "pip", "--disable-pip-version-check", "-q"]


def install_checkout(py: Path, what: str) -> None:
    """Install this checkout's package (not a link to the sources, as an image does), without its deps.

    No build isolation: setuptools is in the environment. A stale build/ folder could carry deleted
    modules into the wheel, so it goes first.
    """
    shutil.rmtree(REPO_ROOT / "build", ignore_errors=True)
    run([*pip(py), "install", "--no-deps", "--no-build-isolation", "--force-reinstall", str(REPO_ROOT)], what)


def require_absent(py: Path, modules: Sequence[str], image: str) -> None:
    """Fail when any of ``modules`` is importable in the environment of ``py`` (the image has none)."""
    check = f"import importlib.util as u, sys; sys.exit([m for m in {tuple(modules)!r} if u.find_spec(m)] != [])"
    if subprocess.run([str(py), "-c", check]).returncode != 0:
        venv = py.parent.parent
        raise ImageEnvError(f"{venv} has one of {tuple(modules)}: it is not the {image} image's environment")
