#!/usr/bin/env bash
# The emulated arm64 board: built once (cached in EDGEKD_BOARD_DIR, default ~/.cache/edgekd/arm64-board), then
# served over ssh on 127.0.0.1 until Ctrl-C. Needs root. Options: --port N, --build-only, --json.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/edgekd device board "$@"
