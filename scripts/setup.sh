#!/usr/bin/env bash
# Create .venv and install the project (CPU torch on machines without CUDA) with the test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q torch
  else
    .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
fi
.venv/bin/python -m pip install -q -e ".[dev]"
# Headless Chromium renders the align job's report.html in tests/test_report.py (Debian's package).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: installing chromium (apt-get install -y chromium) for tests/test_report.py" >&2
    if ! { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; then
      echo "setup.sh: error: could not install chromium with apt-get; tests/test_report.py needs it" >&2
      exit 1
    fi
  else
    echo "setup.sh: warning: chromium is missing and cannot be installed here (needs root and apt-get);" \
         "tests/test_report.py will fail until it is installed: sudo apt-get install -y chromium" >&2
  fi
fi
