#!/usr/bin/env bash
# Create the venv and install defectscan (editable) with its dev and engine extras.
#
# torch: where this machine has no NVIDIA GPU and a CPU build of torch lies in a local wheel
# directory (pip's find-links), install that one first so that pip does not pull a
# multi-gigabyte CUDA build; pyproject.toml's "torch>=2.10" is then already satisfied.
# On a machine with a GPU, pip resolves torch from pyproject.toml (the CUDA build).
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip wheel setuptools 2>&1 | grep -v "is ignored" || true

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    for dir in ${TORCH_WHEEL_DIRS:-/opt/wheels}; do
      wheel=$(ls -1 "$dir"/torch-*+cpu-*.whl 2>/dev/null | sort -V | tail -n 1 || true)
      if [ -n "$wheel" ]; then
        echo "installing the CPU build of torch from $wheel"
        "${pip[@]}" install "$wheel" 2>&1 | grep -v "is ignored" || true
        break
      fi
    done
  fi
fi

"${pip[@]}" install -e ".[dev,engines]" 2>&1 | grep -v "is ignored" || true
"$venv/bin/python" -c "import defectscan, torch, cv2; print('defectscan ready: torch', torch.__version__, 'cv2', cv2.__version__)"
