#!/usr/bin/env bash
# Creates a virtual environment from nothing and installs edgekd into it, building the C++ extension
# (and its CUDA part where nvcc is found).
#
#   bash scripts/setup.sh            the exact versions CI passed with (requirements.lock), into .venv
#   bash scripts/setup.sh --latest   the newest versions pyproject.toml allows (CI's drift check)
#   VENV=DIR bash scripts/setup.sh   into DIR instead of .venv
#
# torch is installed first and pinned (constraints.txt): anything that lets pip choose a newer torch
# pulls several GB of CUDA packages. Refresh the lock with scripts/lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
MODE=${1:-locked}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pipq() { python -m pip install -q "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2); }
case "$MODE" in
  locked)
    pipq "$(grep '^pip==' requirements.lock)"
    pipq -c constraints.txt torch==2.13.0
    pipq -c constraints.txt -r requirements.lock
    pipq -c constraints.txt --no-build-isolation --no-deps -e .
    ;;
  --latest)
    pipq --upgrade pip
    pipq -c constraints.txt torch==2.13.0
    pipq -c constraints.txt --upgrade scikit-build-core pybind11 ninja
    pipq -c constraints.txt --upgrade --upgrade-strategy eager --no-build-isolation -e ".[test]"
    ;;
  *)
    echo "setup.sh: unknown mode $MODE (use --latest or nothing)" >&2; exit 2 ;;
esac
python -m pip check >/dev/null || { python -m pip check >&2; echo "setup.sh: inconsistent environment" >&2; exit 1; }
python -c "import torch, edgekd, edgekd._C as C; print('edgekd ready: torch', torch.__version__, '| kernel', C.build_info())"
