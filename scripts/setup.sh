#!/usr/bin/env bash
# Create .venv and install the project (CPU torch on machines without CUDA) with the test extras.
# Installs no browser: scripts/test.sh installs Chromium for the report's test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# A working nvidia-smi means an NVIDIA GPU and driver: CUDA torch and onnxruntime-gpu (the `gpu`
# extra), else the CPU wheels.
GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU=1; fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ "$GPU" = 1 ]; then
    .venv/bin/python -m pip install -q torch
  else
    .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
fi
if [ "$GPU" = 1 ]; then
  .venv/bin/python -m pip install -q -e ".[dev,gpu]"
  # onnxruntime-gpu replaces the CPU wheel (both own onnxruntime/; see pyproject.toml): remove both,
  # then reinstall the GPU one alone, so that no CPU file hides its CUDA provider
  .venv/bin/python -m pip uninstall -q -y onnxruntime onnxruntime-gpu
  .venv/bin/python -m pip install -q "onnxruntime-gpu>=1.16"
  .venv/bin/python -c "import onnxruntime as o, sys; p = o.get_available_providers(); \
print('setup.sh: onnxruntime providers:', ', '.join(p), file=sys.stderr); \
sys.exit(0 if 'CUDAExecutionProvider' in p else 'setup.sh: error: onnxruntime-gpu has no CUDA provider')"
else
  .venv/bin/python -m pip install -q -e ".[dev]"
fi
