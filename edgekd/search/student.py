"""Student search: the largest student of the teacher's family that the target can run in budget.

Candidates vary depth, width (a multiple of the head size), heads and FFN size, in float32 and int8
(and int4 for generation); each gets a prediction (the calibrated cost model for the target), a size
and a peak memory. Two budgets, one candidate list: the logits graph's latency (`latency.py`), or
LLM generation (`generation=`: decode tokens/s and time to first token, `generation.py`). The choice
is the candidate with the most parameters that meets every constraint; the constraints (budget,
calibration, `max_params`) are arguments, so the caller never edits a result afterwards.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from edgekd.errors import EdgekdError
from edgekd.precision import PRECISIONS, normalize_precision
from edgekd.io import write_json, write_text
from edgekd.targets import generation as gen
from edgekd.targets import latency as lat
from edgekd.targets.spec import (GENERATION_BUDGET, GENERATION_LENGTHS, Target, generation_budget_words,
                                 generation_misses, load_target)

RAM_FRACTION = 0.5  # an app may use about half the device's RAM for one model
OVERRIDE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "intermediate_size")
COLUMNS = [*OVERRIDE_KEYS, "precision", "params", "predicted_ms", "size_mb", "peak_mem_mb", "fits", "fails", "chosen"]
# Generative rows add these; there predicted_ms is None and size_mb, peak_mem_mb are the generation model's
# (the file as the generative format stores it; peak RSS with the KV cache at prompt + decode tokens).
GEN_COLUMNS = ["decode_tok_s", "ttft_ms", "prefill_tok_s"]
FILES = {"csv": "candidates.csv", "json": "candidates.json", "plot": "search.png"}  # SearchResult.save's files


@dataclass(frozen=True)
class SearchResult:
    """`choice`: config overrides for the teacher's config plus "precision"; `table`: every candidate.
    `generation` (a generative search only, else None): {"budget": {decode_tok_s, ttft_ms, prompt_len,
    decode_len}, "format": ..., "predicted": the chosen row's GenerationPrediction.to_dict()}; there the
    logits latency is not searched on and `predicted_ms` is None."""

    choice: dict
    table: list
    target: str
    latency_budget_ms: float
    predicted_ms: Optional[float]
    calibrated: bool
    generation: Optional[dict] = None

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
        columns = COLUMNS + (GEN_COLUMNS if self.generation else [])
        w = csv.DictWriter(buf, fieldnames=columns)
        w.writeheader()
        for r in self.table:
            w.writerow({k: r[k] for k in columns})
        write_text(out / FILES["csv"], buf.getvalue())
        write_json(out / FILES["json"], {"target": self.target, "latency_budget_ms": self.latency_budget_ms,
                                         "calibrated": self.calibrated, "choice": self.choice,
                                         "predicted_ms": self.predicted_ms, "generation": self.generation,
                                         "candidates": self.table})
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
                       calibrated=saved["calibrated"], generation=saved.get("generation"))
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
                    out += [arch | {"precision": normalize_precision(p)} for p in precisions]
    return out


def _row(c: dict, teacher: dict, t: Target, seq_len: int, fmt: str, cal, threads, budget: float,
         max_params: Optional[int]) -> dict:
    """One candidate with its prediction, size, peak memory and the constraints it fails."""
    cfg = {**teacher, **{k: c[k] for k in OVERRIDE_KEYS}}
    pred = lat.predict(cfg, t, seq_len, c["precision"], fmt, cal, threads)
    size = lat.model_size_mb(cfg, c["precision"])
    peak = lat.peak_memory_mb(cfg, seq_len, c["precision"], lat.runtime_for(fmt))
    params = lat.param_count(cfg)
    fails = [why for why, bad in (("latency", pred.total_ms > budget),) if bad] + _fails(t, size, peak, params,
                                                                                         max_params)
    return {**c, "params": params, "predicted_ms": round(pred.total_ms, 4), "size_mb": round(size, 3),
            "peak_mem_mb": round(peak, 2), "fits": not fails, "fails": ",".join(fails), "chosen": False}


def _fails(t: Target, size_mb: float, peak_mb: float, params: int, max_params: Optional[int]) -> list[str]:
    """The limits every candidate meets whatever it is budgeted on: file size, RAM, max_params."""
    limits = (("size", size_mb > float(t.budget["max_model_mb"])),
              ("ram", peak_mb > float(t.memory["ram_mb"]) * RAM_FRACTION),
              ("max_params", max_params is not None and params >= max_params))
    return [why for why, bad in limits if bad]


def generation_budget(t: Target, overrides: Optional[Mapping] = None) -> dict:
    """The generation budget: the target file's `[budget]` keys with `overrides` (None values ignored)
    on top; at least one of decode_tok_s, ttft_ms, with the prompt and decode lengths they hold at."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - {*GENERATION_BUDGET, *GENERATION_LENGTHS}
    if unknown:
        raise EdgekdError(f"unknown generation budget key(s) {', '.join(sorted(unknown))}: use "
                          f"{', '.join((*GENERATION_BUDGET, *GENERATION_LENGTHS))}")
    b = {**(t.generation_budget or {k: None for k in (*GENERATION_BUDGET, *GENERATION_LENGTHS)}), **overrides}
    if b.get("prompt_len") is None:
        b["prompt_len"] = 64
    if b.get("decode_len") is None:
        b["decode_len"] = 128
    if b.get("decode_tok_s") is None and b.get("ttft_ms") is None:
        raise EdgekdError(f"target {t.name} states no generation budget: pass --decode-tok-s and/or --ttft-ms")
    for k, v in b.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise EdgekdError(f"generation budget {k} must be a positive number, got {v!r}")
    return b


def _gen_row(c: dict, teacher: dict, t: Target, fmt: str, cal, threads, budget: Mapping,
             max_params: Optional[int]) -> dict:
    """One candidate with its predicted generation, size, peak RSS and the budgets it misses."""
    cfg = {**teacher, **{k: c[k] for k in OVERRIDE_KEYS}}
    p = gen.predict_generation(cfg, t, c["precision"], budget["prompt_len"], budget["decode_len"], cal, threads, fmt)
    params = lat.param_count(cfg)
    fails = generation_misses(p, budget) + _fails(t, p.size_mb, p.peak_rss_mb, params, max_params)
    return {**c, "params": params, "predicted_ms": None, "size_mb": round(p.size_mb, 3),
            "peak_mem_mb": round(p.peak_rss_mb, 2), "decode_tok_s": round(p.decode_tok_s, 2),
            "ttft_ms": round(p.ttft_ms, 4), "prefill_tok_s": round(p.prefill_tok_s, 1), "fits": not fails,
            "fails": ",".join(fails), "chosen": False}


def _nothing_fits_generation(table: list[dict], target: str, b: Mapping) -> EdgekdError:
    """The one line when no candidate meets the generation budget: the nearest candidate's numbers."""
    def slack(r):  # the worst budget ratio (>= 1 meets it)
        return min((r["decode_tok_s"] / b["decode_tok_s"]) if b.get("decode_tok_s") else math.inf,
                   (b["ttft_ms"] / r["ttft_ms"]) if b.get("ttft_ms") else math.inf)
    best = max(table, key=slack)
    other = sorted({f for r in table for f in r["fails"].split(",") if f in ("size", "ram", "max_params")})
    limits = f"; also over the target's {'/'.join(other)} limit for some" if other else ""
    return EdgekdError(f"no student meets {target}'s generation budget ({generation_budget_words(b)}): the nearest, "
                       f"{describe(best)}, is predicted at {best['decode_tok_s']:.1f} tok/s decode and "
                       f"{best['ttft_ms']:.1f} ms TTFT{limits}; relax --decode-tok-s/--ttft-ms or pick a faster target")


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
                   seq_len: int = 64, calibration: Any = None, max_params: Optional[int] = None,
                   fmt: str | None = None, precisions: tuple[str, ...] | None = None, threads: int | None = None,
                   generation: Optional[Mapping] = None) -> SearchResult:
    """Choose the student: the most parameters within the latency budget (default: the target's), the
    target's max model size and RAM, and fewer than `max_params` parameters when given (the job's
    strictly smaller student after a recalibration). `calibration`: the latency model's Calibration,
    or None for the datasheet priors. Raises EdgekdError when nothing fits.

    `generation` (a dict, {} for the target's budget): search on LLM generation instead, the budget
    keys decode_tok_s, ttft_ms, prompt_len, decode_len overriding the target file's; `calibration` is
    then a GenerationCalibration, `fmt` a generative format, precisions default to float32/int8/int4."""
    t = load_target(target)
    teacher = lat.arch_of(teacher_config)
    if generation is not None:
        return _search_generation(teacher_config, teacher, t, generation, calibration, max_params, fmt,
                                  precisions or PRECISIONS, threads, latency_budget_ms)
    if calibration is not None and not isinstance(calibration, lat.Calibration):
        raise TypeError(f"calibration must be a Calibration or None, got {type(calibration).__name__}")
    fmt = fmt or t.runtime["preferred_format"]
    budget = float(latency_budget_ms if latency_budget_ms is not None else t.budget["latency_ms"])
    if budget <= 0:
        raise EdgekdError(f"--latency-budget must be positive, got {budget}")
    table = [_row(c, teacher, t, seq_len, fmt, calibration, threads, budget, max_params)
             for c in candidates(teacher_config, precisions or ("float32", "int8"))]
    table.sort(key=lambda r: (-r["params"], r["predicted_ms"]))
    fitting = [r for r in table if r["fits"]]
    if not fitting:
        raise _nothing_fits(table, t.name, budget, max_params)
    best = _choose(fitting, lambda r: -r["predicted_ms"], teacher)
    return SearchResult(choice={k: best[k] for k in OVERRIDE_KEYS} | {"precision": best["precision"]}, table=table,
                        target=t.name, latency_budget_ms=budget, predicted_ms=best["predicted_ms"],
                        calibrated=calibration is not None)


def _choose(fitting: list[dict], speed, teacher: Mapping) -> dict:
    """Most parameters among the students that can start from the teacher's weights (its head size:
    edgekd.models.students copies heads only of the same size, else the student starts from random
    weights and loses most of what distillation buys), then among the rest; among equals the more
    accurate precision (float32, int8, int4), then the faster."""
    inherits = lambda r: r["head_dim"] == teacher["head_dim"]  # noqa: E731
    best = max(fitting, key=lambda r: (inherits(r), r["params"], -PRECISIONS.index(r["precision"]), speed(r)))
    best["chosen"] = True
    return best


def _search_generation(teacher_config: Any, teacher: dict, t: Target, overrides: Mapping, calibration,
                       max_params: Optional[int], fmt: str | None, precisions, threads,
                       latency_budget_ms: float | None) -> SearchResult:
    """search_student on the generation budget: the same candidates, rows from the generation model."""
    if calibration is not None and not isinstance(calibration, gen.GenerationCalibration):
        raise TypeError(f"a generative search takes a GenerationCalibration or None, got {type(calibration).__name__}")
    b = generation_budget(t, overrides)
    fmt = gen.check_format(fmt or (calibration.fmt if calibration else gen.target_format(t)))
    table = [_gen_row(c, teacher, t, fmt, calibration, threads, b, max_params)
             for c in candidates(teacher_config, tuple(precisions))]
    table.sort(key=lambda r: (-r["params"], -r["decode_tok_s"]))
    fitting = [r for r in table if r["fits"]]
    if not fitting:
        raise _nothing_fits_generation(table, t.name, b)
    best = _choose(fitting, lambda r: r["decode_tok_s"], teacher)
    cfg = {**teacher, **{k: best[k] for k in OVERRIDE_KEYS}}
    pred = gen.predict_generation(cfg, t, best["precision"], b["prompt_len"], b["decode_len"], calibration,
                                  threads, fmt)
    return SearchResult(choice={k: best[k] for k in OVERRIDE_KEYS} | {"precision": best["precision"]}, table=table,
                        target=t.name, latency_budget_ms=float(latency_budget_ms or t.budget["latency_ms"]),
                        predicted_ms=None, calibrated=calibration is not None,
                        generation={"budget": b, "format": fmt, "predicted": pred.to_dict()})
