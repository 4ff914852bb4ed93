"""Fault injection for the resume tests: EDGEKD_FAULT=kill:PHASE SIGKILLs edgekd at that point.

PHASE is one of search, distill, scratch, export, profile; the point lies inside the phase (after
its first checkpoint, export or profile), where a real crash would hurt most. Unset, this is a no-op.
"""

from __future__ import annotations

import os
import signal


def point(phase: str) -> None:
    # Reads the environment itself, not edgekd.settings: the hook sits deep in every phase, a test sets
    # it on the subprocess it kills, and threading Settings through each phase for it would add only noise.
    if os.environ.get("EDGEKD_FAULT") == f"kill:{phase}":
        os.kill(os.getpid(), signal.SIGKILL)
