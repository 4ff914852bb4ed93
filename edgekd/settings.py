"""Where edgekd keeps what outlives a run (token cache, host facts, saved calibrations, logs).

One place reads the environment for it: EDGEKD_CACHE, else $XDG_CACHE_HOME/edgekd, else
~/.cache/edgekd.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("EDGEKD_CACHE")
    if base:
        return Path(base).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser().absolute() / "edgekd"
