"""Student search: the largest student of the teacher's family that the target can run in budget.

Candidates vary depth, width (a multiple of the head size), heads and FFN size, in float32 and int8;
each gets a predicted latency (the calibrated cost model for the target), a size and a peak memory.
The choice is the candidate with the most parameters that meets every constraint; the constraints
(budget, calibration, `max_params`) are arguments, so the caller never edits a result afterwards.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from edgekd.errors import EdgekdError
from edgekd.io import write_json, write_text
from edgekd.targets import latency as lat
from edgekd.targets.spec import Target, load_target

RAM_FRACTION = 0.5  # an app may use about half the device's RAM for one model
OVERRIDE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "intermediate_size")
COLUMNS = [*OVERRIDE_KEYS, "precision", "params", "predicted_ms", "size_mb", "peak_mem_mb", "fits", "fails", "chosen"]
FILES = {"csv": "candidates.csv", "json": "candidates.json", "plot": "search.png"}  # SearchResult.save's files


@dataclass(frozen=True)
class SearchResult:
    """`choice`: config overrides for the teacher's config plus "precision"; `table`: every candidate."""

    choice: dict
    table: list
    target: str
    latency_budget_ms: float
    predicted_ms: float
    calibrated: bool

    @property
    def choice_row(self) -> dict:
        return next(r for r in self.table if r["chosen"])

    @property
    def precision(self) -> str:
        return self.choice["precision"]

    @property
    def arch(self) -> dict:
        """The chosen architecture without its precision: the engine's student overrides."""
        return {k: v for k, v in self.choice.items() if k != "precision"}

    def student_config(self, teacher_config: Any) -> dict:
        """The teacher's config dict with the choice applied in the family's own field names, per-layer
        lists cut to the chosen depth (edgekd.models.arch): `LlamaConfig(**result.student_config(t))`."""
        from edgekd.models.arch import with_arch

        base = dict(teacher_config) if isinstance(teacher_config, Mapping) else teacher_config.to_dict()
        return with_arch(base, self.arch)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """candidates.csv, candidates.json (with the choice) and search.png in `out_dir`; their paths."""
        from edgekd.search.show import plot_search

        out = Path(out_dir)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS)
        w.writeheader()
        for r in self.table:
            w.writerow({k: r[k] for k in COLUMNS})
        write_text(out / FILES["csv"], buf.getvalue())
        write_json(out / FILES["json"], {"target": self.target, "latency_budget_ms": self.latency_budget_ms,
                                         "calibrated": self.calibrated, "choice": self.choice,
                                         "predicted_ms": self.predicted_ms, "candidates": self.table})
        plot_search(self, out / FILES["plot"])
        return {k: out / f for k, f in FILES.items()}

    @classmethod
    def load(cls, out_dir: str | Path) -> "SearchResult":
        """The result `save` wrote (a resumed job keeps its student); a corrupt file is one line."""
        path = Path(out_dir) / FILES["json"]
        try:
            saved = json.loads(path.read_text())
            return cls(choice=saved["choice"], table=saved["candidates"], target=saved["target"],
                       latency_budget_ms=saved["latency_budget_ms"], predicted_ms=saved["predicted_ms"],
                       calibrated=saved["calibrated"])
        except OSError as e:
            raise EdgekdError(f"{path}: cannot read the saved search ({e.strerror}): start a new run with another "
                              f"--out") from e
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise EdgekdError(f"{path} is corrupt ({type(e).__name__}): start a new run with another --out") from e


def describe(row: Mapping) -> str:
    """One candidate in words, for messages: '2 layers, hidden 64, 4 heads, ffn 128, int8, 0.31M params'."""
    return (f"{row['num_hidden_layers']} layers, hidden {row['hidden_size']}, {row['num_attention_heads']} heads, "
            f"ffn {row['intermediate_size']}, {row['precision']}, {row['params'] / 1e6:.2f}M params")


def _spread(lo: int, hi: int, n: int) -> list[int]:
    """Up to n integers from lo to hi, evenly spaced, always including both ends."""
    if hi <= lo:
        return [hi]
    if hi - lo + 1 <= n:
        return list(range(lo, hi + 1))
    return sorted({round(lo + (hi - lo) * i / (n - 1)) for i in range(n)})


def candidates(teacher_config: Any, precisions: tuple[str, ...] = ("float32", "int8"), max_widths: int = 8,
               max_depths: int = 8, ffn_ratios: tuple[float, ...] = (1.0, 0.75, 0.5)) -> list[dict]:
    """Architectures of the teacher's family smaller than it: width a multiple of the head size,
    heads dividing the width, the teacher's query/key-value grouping kept where it divides."""
    a = lat.arch_of(teacher_config)
    teacher_params = lat.param_count(a)
    hd_t, H_t, L_t = a["head_dim"], a["hidden_size"], a["num_hidden_layers"]
    group = max(1, a["num_attention_heads"] // a["num_key_value_heads"])
    ffn_ratio_t = a["intermediate_size"] / H_t
    head_dims = [hd_t] + ([hd_t // 2] if hd_t // 2 >= 16 and (hd_t // 2) % 2 == 0 else [])
    out, seen = [], set()
    for hd in head_dims:
        for h in (k * hd for k in _spread(1, H_t // hd, max_widths)):
            nh = h // hd
            nkv = nh // group if nh % group == 0 else nh
            for L in _spread(1, L_t, max_depths):
                for r in ffn_ratios:
                    f = max(8, int(round(ffn_ratio_t * r * h / 8)) * 8)
                    arch = dict(zip(OVERRIDE_KEYS, (L, h, nh, nkv, hd, f)))
                    key = tuple(arch.values())
                    if key in seen or lat.param_count({**a, **arch}) >= teacher_params:  # a student is smaller
                        continue
                    seen.add(key)
                    out += [arch | {"precision": lat.normalize_precision(p)} for p in precisions]
    return out


def _row(c: dict, teacher: dict, t: Target, seq_len: int, fmt: str, cal, threads, budget: float,
         max_params: Optional[int]) -> dict:
    """One candidate with its prediction, size, peak memory and the constraints it fails."""
    cfg = {**teacher, **{k: c[k] for k in OVERRIDE_KEYS}}
    pred = lat.predict(cfg, t, seq_len, c["precision"], fmt, cal, threads)
    size = lat.model_size_mb(cfg, c["precision"])
    peak = lat.peak_memory_mb(cfg, seq_len, c["precision"], lat.runtime_for(fmt))
    params = lat.param_count(cfg)
    limits = (("latency", pred.total_ms > budget), ("size", size > float(t.budget["max_model_mb"])),
              ("ram", peak > float(t.memory["ram_mb"]) * RAM_FRACTION),
              ("max_params", max_params is not None and params >= max_params))
    fails = [why for why, bad in limits if bad]
    return {**c, "params": params, "predicted_ms": round(pred.total_ms, 4), "size_mb": round(size, 3),
            "peak_mem_mb": round(peak, 2), "fits": not fails, "fails": ",".join(fails), "chosen": False}


def _nothing_fits(table: list[dict], target: str, budget: float, max_params: Optional[int]) -> EdgekdError:
    """The one line when no candidate fits: the smallest and fastest predictions, the other limits hit."""
    fastest = min(table, key=lambda r: r["predicted_ms"])
    smallest = min(table, key=lambda r: (r["params"], r["predicted_ms"]))
    if max_params is not None:
        return EdgekdError(f"no student smaller than {max_params:,} parameters fits {target} within {budget:g} ms: "
                           f"the smallest is {describe(smallest)}, predicted at {smallest['predicted_ms']:.2f} ms")
    why = f"the smallest candidate ({describe(smallest)}) is predicted at {smallest['predicted_ms']:.2f} ms"
    if fastest is not smallest:
        why += f", the fastest ({describe(fastest)}) at {fastest['predicted_ms']:.2f} ms"
    other = sorted({f for r in table for f in r["fails"].split(",") if f and f != "latency"})
    limits = f"; also over the target's {'/'.join(other)} limit for some" if other else ""
    return EdgekdError(f"no student fits {target} within {budget:g} ms: {why}{limits}; "
                       f"raise --latency-budget or pick a faster target")


def search_student(teacher_config: Any, target: Target | str, latency_budget_ms: float | None = None, *,
                   seq_len: int = 64, calibration: Optional[lat.Calibration] = None,
                   max_params: Optional[int] = None, fmt: str | None = None,
                   precisions: tuple[str, ...] = ("float32", "int8"), threads: int | None = None) -> SearchResult:
    """Choose the student: the most parameters within the latency budget (default: the target's), the
    target's max model size and RAM, and fewer than `max_params` parameters when given (the job's
    strictly smaller student after a recalibration). `calibration`: the latency model's Calibration,
    or None for the datasheet priors. Raises EdgekdError when nothing fits."""
    if calibration is not None and not isinstance(calibration, lat.Calibration):
        raise TypeError(f"calibration must be a Calibration or None, got {type(calibration).__name__}")
    t = load_target(target)
    fmt = fmt or t.runtime["preferred_format"]
    budget = float(latency_budget_ms if latency_budget_ms is not None else t.budget["latency_ms"])
    if budget <= 0:
        raise EdgekdError(f"--latency-budget must be positive, got {budget}")
    teacher = lat.arch_of(teacher_config)
    table = [_row(c, teacher, t, seq_len, fmt, calibration, threads, budget, max_params)
             for c in candidates(teacher_config, precisions)]
    table.sort(key=lambda r: (-r["params"], r["predicted_ms"]))
    fitting = [r for r in table if r["fits"]]
    if not fitting:
        raise _nothing_fits(table, t.name, budget, max_params)
    # Most parameters; among equals float32 before int8 (more accurate), then the faster.
    best = max(fitting, key=lambda r: (r["params"], r["precision"] == "float32", -r["predicted_ms"]))
    best["chosen"] = True
    return SearchResult(choice={k: best[k] for k in OVERRIDE_KEYS} | {"precision": best["precision"]}, table=table,
                        target=t.name, latency_budget_ms=budget, predicted_ms=best["predicted_ms"],
                        calibrated=calibration is not None)
