"""Wall and CPU seconds per phase of a run (and the peak resident memory by its end), kept across
--resume so a report covers every invocation."""

from __future__ import annotations

import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from edgekd.io import write_json


def peak_rss_mb() -> dict[str, float]:
    """This process's peak resident memory so far, and its largest finished child's (the export builders
    run as children), in MB."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self": s.ru_maxrss / 1024, "child": c.ru_maxrss / 1024}


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (profiling runs in a child process)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class PhaseTimer:
    """Sums wall and CPU time per named phase; wall time lies on a shared machine, CPU time much less.

    With a `path`, the sums are saved after every phase and loaded again on resume, so a run killed
    and resumed reports the time of all its invocations (`invocations` counts them).
    """

    def __init__(self, path: Optional[Path] = None, resume: bool = False):
        self.path = Path(path) if path is not None else None
        self.phases: dict[str, dict[str, float]] = {}
        self.spans: list[list] = []  # [phase, start, end] in Unix seconds, this invocation's, in order
        self.invocations = 1
        if resume and self.path is not None and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
                self.phases = {k: {"wall_s": float(v["wall_s"]), "cpu_s": float(v["cpu_s"])}
                               | {m: float(v[m]) for m in ("peak_rss_mb", "peak_child_rss_mb") if m in v}
                               for k, v in saved.get("phases", {}).items()}
                self.invocations = int(saved.get("invocations", 1)) + 1
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.phases, self.invocations = {}, 1  # a damaged record only loses earlier timings

    @contextmanager
    def __call__(self, name: str):
        w, c = time.time(), cpu_s()
        try:
            yield
        finally:
            end = time.time()
            self.spans.append([name, round(w, 2), round(end, 2)])
            self.add(name, end - w, cpu_s() - c)

    def add(self, name: str, wall_s: float, cpu: float) -> None:
        p = self.phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
        p["wall_s"] = round(p["wall_s"] + wall_s, 2)
        p["cpu_s"] = round(p["cpu_s"] + cpu, 2)
        peak = peak_rss_mb()  # the peak so far: at a phase's end, the most any phase up to it held
        p["peak_rss_mb"], p["peak_child_rss_mb"] = round(peak["self"], 1), round(peak["child"], 1)
        self.save()

    def save(self) -> None:
        """Record this invocation (also before its first phase ends, so a kill mid-phase still counts)."""
        if self.path is not None:
            write_json(self.path, {"phases": self.phases, "invocations": self.invocations, "spans": self.spans})

    def summary(self) -> dict:
        out = dict(self.phases)
        out["total"] = {k: round(sum(p[k] for p in self.phases.values()), 2) for k in ("wall_s", "cpu_s")}
        out["invocations"] = self.invocations
        return out
