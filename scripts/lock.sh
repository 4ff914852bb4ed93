#!/usr/bin/env bash
# Refreshes requirements.lock: a fresh environment with the newest versions pyproject.toml allows,
# the whole test suite run in it, and only then its exact versions written to the lock.
#   bash scripts/lock.sh          (about 20 minutes on 2 cores; commit requirements.lock if it changed)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv-lock
VENV=.venv-lock bash scripts/setup.sh --latest
.venv-lock/bin/python -m pytest tests -q -x
{
  echo "# Exact versions CI passed with: scripts/setup.sh installs these. Refresh with scripts/lock.sh."
  .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v '^setuptools==\|^wheel=='
} > requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
rm -rf .venv-lock
echo "requirements.lock refreshed"
