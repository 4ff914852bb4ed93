"""Fault injection for the resume tests: EDGEKD_FAULT=kill:PHASE SIGKILLs edgekd at that point.

PHASE is one of search, distill, scratch, export, profile; the point lies inside the phase (after
its first checkpoint, export or profile), where a real crash would hurt most. Unset, this is a no-op.
"""

from __future__ import annotations

import os
import signal


def point(phase: str) -> None:
    if os.environ.get("EDGEKD_FAULT") == f"kill:{phase}":
        os.kill(os.getpid(), signal.SIGKILL)
