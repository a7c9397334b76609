"""The trainer image's environment, for the Jobs the local executor runs (training, consolidation, compose).

``images/trainer/Dockerfile`` installs ``torch==2.13.0`` into a fresh virtualenv, then the package with
its dependencies as pip resolves them from ``pyproject.toml``: no vLLM, no test tools, and whatever
transformers/peft the resolver picks without vLLM's pins. The Jobs of the local cluster run from a
virtualenv built the same way (``~/.cache/dynamiclora/trainer-venv``), so a dependency the image lacks,
or a version it resolves differently, fails here as it would in the shipped image.

One shortcut, named: torch's own wheel (3 GB with its CUDA libraries) is not downloaded a second time;
its files are linked from the development environment, which installs the same pinned wheel. Everything
else is installed by pip. Dependencies are resolved once per content of ``pyproject.toml``'s dependency
list; the package itself is installed again at each start so that the Jobs run this checkout's code.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

from dynamiclora_dev.localcluster.image_env import REPO_ROOT, ImageEnvError, install_checkout, pip, require_absent, run
from dynamiclora_dev.localcluster.image_env import env_dir as _env_dir

PYPROJECT = REPO_ROOT / "pyproject.toml"
# The distributions of the torch wheel and the wheels it pulls in that are too big to fetch twice.
LINKED = re.compile(r"^(torch|torchgen|functorch|triton|nvidia|cuda)([-_.].*)?$")
FORBIDDEN = ("vllm", "moto", "pytest", "dynamiclora_dev")  # what the trainer image does not have


def env_dir() -> Path:
    """Where the environment lives (``$DYNAMICLORA_TRAINER_VENV`` overrides)."""
    return _env_dir("DYNAMICLORA_TRAINER_VENV", "trainer-venv")


def _dependencies_digest() -> str:
    text = PYPROJECT.read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    if block is None:
        raise ImageEnvError(f"{PYPROJECT} has no dependencies list")
    return hashlib.sha256(block.group(1).encode()).hexdigest()[:16]


def _site_packages(py: Path) -> Path:
    out = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return Path(out.stdout.strip())


def _link_torch(site: Path) -> None:
    """Link the torch wheel's files from this (development) environment into ``site``."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise ImageEnvError("torch is not installed in the development environment (run make install)")
    source = Path(spec.origin).parent.parent
    for entry in sorted(source.iterdir()):
        if LINKED.match(entry.name) and not (site / entry.name).exists():
            (site / entry.name).symlink_to(entry)


@functools.cache
def ensure_trainer_env() -> Path:
    """Build or refresh the environment (once per process); returns its Python interpreter."""
    venv = env_dir()
    py = venv / "bin" / "python"
    stamp = venv / f".dependencies-{_dependencies_digest()}"
    if not stamp.exists():
        shutil.rmtree(venv, ignore_errors=True)  # resolved afresh, as a new image build would
        run([sys.executable, "-m", "venv", str(venv)], f"creating {venv}")
        _link_torch(_site_packages(py))
        run([*pip(py), "install", "setuptools>=77", "wheel"], "installing the build tools")
        shutil.rmtree(REPO_ROOT / "build", ignore_errors=True)
        run([*pip(py), "install", "--no-build-isolation", str(REPO_ROOT)],
            "installing dynamiclora and its dependencies as the trainer image does")  # fmt: skip
        stamp.touch()
    install_checkout(py, "installing dynamiclora into the trainer environment")
    require_absent(py, FORBIDDEN, "trainer")
    return py
