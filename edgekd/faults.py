"""Fault injection for the resume tests: EDGEKD_FAULT=kill:PHASE SIGKILLs edgekd at that point.

PHASE is one of search, distill, scratch, export, profile, teacher_cache; the point lies inside the phase
(after its first checkpoint, export or profile), where a real crash would hurt most. The hook sits deep in
every phase, where no caller could pass Settings, so an edge arms it once from `Settings.fault`
(`arm`, called by edgekd.distill.apply_settings); unarmed, `point` is a no-op.
"""

from __future__ import annotations

import os
import signal
from typing import Optional

_armed: Optional[str] = None  # Settings.fault ("kill:PHASE"), handed over by `arm`


def arm(fault: Optional[str]) -> None:
    """Kill this process at `point(PHASE)` when `fault` is "kill:PHASE" (None disarms)."""
    global _armed
    _armed = fault


def point(phase: str) -> None:
    if _armed == f"kill:{phase}":
        os.kill(os.getpid(), signal.SIGKILL)
