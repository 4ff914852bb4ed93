#!/usr/bin/env bash
# Creates .venv from nothing (torch pinned to 2.13.0 first, so nothing pulls a CUDA build) and
# installs edgekd into it, building the C++ extension (and its CUDA part where nvcc is found).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q torch==2.13.0
python -m pip install -q -c constraints.txt scikit-build-core pybind11 ninja pytest
python -m pip install -q -c constraints.txt --no-build-isolation -e ".[test]"
python -c "import torch, edgekd, edgekd._C as C; print('edgekd ready: torch', torch.__version__, '| kernel', C.build_info())"
