"""What every cost model shares: the device facts it predicts against, the peaks at a thread count,
the saved calibration files, and the one least-squares fitter of their calibrations.

The cost models (`cost_latency.py`, `cost_generation.py`, and whatever comes next) import these;
they never import each other.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

import numpy as np

from edgekd.errors import EdgekdError
from edgekd.io import write_json
from edgekd.settings import Settings
from edgekd.targets.spec import Target, load_target


def measured_target(target: Target | str, settings: Settings | None = None) -> Target:
    """load_target, refusing a target whose measured facts (the host's) were never filled in."""
    t = load_target(target, settings)
    if t.unmeasured:
        raise EdgekdError(f"target {t.name}: its measured facts ({', '.join(t.unmeasured)}) are not filled in: "
                          f"pass edgekd.targets.measure_target(load_target({t.name!r}))")
    return t


def device_facts(t: Target, threads: int | None = None) -> dict[str, float]:
    """The numbers a cost model predicts against: peaks, bandwidth, cores and the threads used."""
    threads = threads or t.runtime["default_threads"]
    return {"peak_gflops_fp32": float(t.cpu["peak_gflops_fp32"]), "peak_gops_int8": float(t.cpu["peak_gops_int8"]),
            "bandwidth_gbs": float(t.memory["bandwidth_gbs"]), "big_cores": float(t.cpu["big_cores"]),
            "threads": float(threads)}


def facts_for(t: Target, calibration, threads: int | None) -> dict[str, float]:
    """The target's facts at `threads`, with the facts a calibration was fitted against on top (its
    factors are only right for those numbers)."""
    facts = device_facts(t, threads)
    if calibration is not None and calibration.facts:
        facts.update({k: v for k, v in calibration.facts.items() if k != "threads"})
    return facts


def peaks(facts: Mapping[str, float], threads: int | None) -> tuple[float, float, float]:
    """(fp32 FLOP/s, int8 op/s, bytes/s) at `threads`: compute scales with the big cores used,
    bandwidth does not."""
    big = facts["big_cores"]
    used = min(float(threads or facts["threads"]), big)
    scale = used / big
    return facts["peak_gflops_fp32"] * 1e9 * scale, facts["peak_gops_int8"] * 1e9 * scale, facts["bandwidth_gbs"] * 1e9


# --- saved calibrations ---------------------------------------------------------------------------

class SavedCalibration:
    """to_dict/from_dict/save of a calibration dataclass with `device` and `fmt` fields: one file per
    (device, format) in the cache, written and read only when the user asks."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def save(self, path: str | os.PathLike | None = None) -> Path:
        path = Path(path) if path else calibration_path(self.device, self.fmt)
        write_json(path, self.to_dict())
        return path


def calibration_path(device: str, fmt: str, settings: Settings | None = None) -> Path:
    """The device's saved calibration for a format in the cache."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{device}-{fmt}")
    return (settings or Settings.from_env()).cache_dir / "calibration" / f"{safe}.json"


def load_calibration(device: str, fmt: str, path: str | os.PathLike | None, cls: type,
                     settings: Settings | None = None):
    """The saved calibration of class `cls` for (device, format), or None when there is none."""
    p = Path(path) if path else calibration_path(device, fmt, settings)
    if not p.is_file():
        return None
    try:
        return cls.from_dict(json.loads(p.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError, UnicodeDecodeError) as e:
        raise EdgekdError(f"{p}: corrupt calibration file ({type(e).__name__}): delete it to recalibrate") from e


# --- fitting -------------------------------------------------------------------------------------

def fit_errors(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """The relative errors of a fit on the observations it was fitted on."""
    rel = np.abs(predicted - measured) / measured
    return {"median_abs_rel_err": float(np.median(rel)), "max_abs_rel_err": float(rel.max()),
            "observations": int(len(measured))}


def levenberg_marquardt(resid, theta0: np.ndarray, free: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Minimise |resid(theta)|^2 over the entries `free` of theta (numeric Jacobian, steps clipped to
    +-2 in log space): the one fitter of every cost model's calibration."""
    theta, mu = np.array(theta0, dtype=float), 1e-2
    r = resid(theta)
    cost = float(r @ r)
    for _ in range(iterations):
        J = np.empty((len(r), len(free)))
        for j, p in enumerate(free):
            d = np.zeros_like(theta)
            d[p] = 1e-4
            J[:, j] = (resid(theta + d) - r) / 1e-4
        A, g = J.T @ J, J.T @ r
        improved = False
        for _ in range(10):
            step = np.linalg.solve(A + mu * np.diag(np.diag(A) + 1e-9), -g)
            cand = theta.copy()
            cand[free] += np.clip(step, -2.0, 2.0)
            rc = resid(cand)
            cc = float(rc @ rc)
            if cc < cost:
                theta, r, cost, mu, improved = cand, rc, cc, max(mu / 3, 1e-7), True
                break
            mu *= 4
        if not improved or np.max(np.abs(step)) < 1e-6:
            break
    return theta
