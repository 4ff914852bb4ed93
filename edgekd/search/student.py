"""Student search: the largest student of the teacher's family that the target can run in budget.

Candidates vary depth, width (a multiple of the head size), heads and FFN size, in each precision the
cost model knows; each gets the cost model's prediction on the target, a size and a peak memory. The
cost model (`edgekd.targets.cost_model`: `latency` for one logits forward, `generation` for an LLM
generating) says what a row holds and which of its budget's keys a row misses; the search is the same
for every one. The choice is the candidate with the most parameters that meets every constraint; the
constraints (budget, calibration, `max_params`) are arguments, so the caller never edits a result.
Only narrowings of the teacher (a student its weights can initialise) are chosen; a candidate that is
not one says why in its `fails` column.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from edgekd.errors import EdgekdError
from edgekd.io import write_json, write_text
from edgekd.models.arch import arch_of, param_count, with_arch
from edgekd.precision import PRECISIONS, normalize_precision
from edgekd.settings import Settings
from edgekd.targets.cost_model import ARCH_COLUMNS, TAIL_COLUMNS, CostModel, get_cost_model
from edgekd.targets.fitting import measured_target
from edgekd.targets.spec import Target
from edgekd.search.spaces import IMAGE, SPACES, TRANSFORMER, SearchSpace, space_for

RAM_FRACTION = 0.5  # an app may use about half the device's RAM for one model
OVERRIDE_KEYS = ARCH_COLUMNS
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
    cost_model: str = "latency"     # the edgekd.targets cost model the search ran on
    budget: dict = field(default_factory=dict)  # that model's budget (its bounds and the lengths they hold at)
    fmt: str = ""                   # the export format it predicted
    # The weight recipe the chosen student's quantised file gets in `fmt` and why (quant.recipe_words: format,
    # quantize, recipe, blockwise, grain, why); None for a float32 choice or a format without edgekd's weight
    # recipes (ONNX/TFLite).
    quant_recipe: Optional[dict] = None
    space: str = "transformer"      # what the candidates vary (search.spaces: transformer or image)

    @property
    def columns(self) -> list[str]:
        """candidates.csv's columns: the architecture, precision, params, the cost model's, fits/fails/chosen."""
        return [*SPACES[self.space].columns, "precision", "params", *get_cost_model(self.cost_model).columns,
                *TAIL_COLUMNS]

    @property
    def choice_row(self) -> dict:
        return next(r for r in self.table if r["chosen"])

    @property
    def precision(self) -> str:
        return self.choice["precision"]

    @property
    def held_back(self) -> Optional[dict]:
        """The largest candidate that met the budget and every other limit but this machine's memory for training
        it beside the teacher (`train_memory`): what a machine with more memory would have trained. None where the
        memory held nothing larger back."""
        chosen = self.choice_row["params"] if self.table else 0
        over = [r for r in self.table if r.get("fails") == "train_memory" and r["params"] > chosen]
        return max(over, key=lambda r: (r["params"], -PRECISIONS.index(r["precision"])), default=None)

    @property
    def arch(self) -> dict:
        """The chosen architecture without its precision: the engine's student overrides (an image student's in
        its family's own fields)."""
        return SPACES[self.space].overrides(self.choice)

    def student_config(self, teacher_config: Any) -> dict:
        """The teacher's config dict with the choice applied in the family's own field names, per-layer
        lists cut to the chosen depth (edgekd.models.arch): `LlamaConfig(**result.student_config(t))`."""
        base = dict(teacher_config) if isinstance(teacher_config, Mapping) else teacher_config.to_dict()
        return with_arch(base, self.arch) if self.space == TRANSFORMER.name else {**base, **self.arch}

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """candidates.csv, candidates.json (with the choice) and search.png in `out_dir`; their paths."""
        from edgekd.search.show import plot_search

        out = Path(out_dir)
        buf = io.StringIO()
        columns = self.columns
        w = csv.DictWriter(buf, fieldnames=columns)
        w.writeheader()
        for r in self.table:
            w.writerow({k: r[k] for k in columns})
        write_text(out / FILES["csv"], buf.getvalue())
        write_json(out / FILES["json"], {"target": self.target, "latency_budget_ms": self.latency_budget_ms,
                                         "calibrated": self.calibrated, "choice": self.choice,
                                         "predicted_ms": self.predicted_ms, "generation": self.generation,
                                         "cost_model": self.cost_model, "budget": self.budget, "fmt": self.fmt,
                                         "quant_recipe": self.quant_recipe, "space": self.space,
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
                       calibrated=saved["calibrated"], generation=saved.get("generation"),
                       cost_model=saved.get("cost_model", "generation" if saved.get("generation") else "latency"),
                       budget=saved.get("budget") or _old_budget(saved), fmt=saved.get("fmt", ""),
                       quant_recipe=saved.get("quant_recipe"), space=saved.get("space", TRANSFORMER.name))
        except OSError as e:
            raise EdgekdError(f"{path}: cannot read the saved search ({e.strerror}): start a new run with another "
                              f"--out") from e
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise EdgekdError(f"{path} is corrupt ({type(e).__name__}): start a new run with another --out") from e


def describe(row: Mapping) -> str:
    """One candidate in words, for messages: '2 layers, hidden 64, 4 heads, ffn 128, int8, 0.31M params' (an image
    candidate: its family's fields and shares of the teacher's blocks and channels)."""
    return (IMAGE if "student" in row else TRANSFORMER).describe(row)


def _spread(lo: int, hi: int, n: int) -> list[int]:
    """Up to n integers from lo to hi, evenly spaced, always including both ends."""
    if hi <= lo:
        return [hi]
    if hi - lo + 1 <= n:
        return list(range(lo, hi + 1))
    return sorted({round(lo + (hi - lo) * i / (n - 1)) for i in range(n)})


def _old_budget(saved: Mapping) -> dict:
    """The budget of a search saved before SearchResult kept it (a run resumed across the change)."""
    g = saved.get("generation")
    return dict(g["budget"]) if g else {"latency_ms": saved["latency_budget_ms"], "seq_len": 64}


def kv_heads_for(nh: int, teacher: Mapping) -> int:
    """The student's key/value heads for `nh` query heads: as few as divide nh with at most the teacher's
    query group per KV head and no more than the teacher's KV heads (the teacher's KV heads can then
    initialise them); nh itself (no grouping) when nothing does."""
    group = max(1, teacher["num_attention_heads"] // teacher["num_key_value_heads"])
    for nkv in range(1, min(nh, teacher["num_key_value_heads"]) + 1):
        if nh % nkv == 0 and nh // nkv <= group:
            return nkv
    return nh


def _widths(a: Mapping, max_widths: int, block: int = 1) -> list[tuple[int, int]]:
    """(head size, width) pairs: the teacher's head size (and half of it, where that is still a RoPE-able 16 or
    more) and up to `max_widths` widths evenly spread, each a multiple of the head size and of `block`, up to
    the teacher's width."""
    hd_t = a["head_dim"]
    out = []
    for hd in [hd_t] + ([hd_t // 2] if hd_t // 2 >= 16 and (hd_t // 2) % 2 == 0 else []):
        step = math.lcm(hd, block)
        if step <= a["hidden_size"]:
            out += [(hd, k * step) for k in _spread(1, a["hidden_size"] // step, max_widths)]
    return out


def block_problem(teacher_config: Any) -> Optional[str]:
    """Why the teacher's sizes allow no quantised student whose every weight input is whole 32-wide blocks
    (fake_quant.BLOCK: the runtimes' int4/int8 weight blocks; LiteRT's blockwise int4 takes nothing else), or
    None when they do: no width within the teacher's that is a multiple of both its head size and the block
    (a student keeps the teacher's head size), or an FFN narrower than one block."""
    from edgekd.quant.fake_quant import BLOCK

    a = arch_of(teacher_config)
    hd, h, f = a["head_dim"], a["hidden_size"], a["intermediate_size"]
    if math.lcm(hd, BLOCK) > h:
        return (f"the teacher's head size {hd} makes every width a multiple of {hd}, and none up to its hidden size "
                f"{h} is a multiple of {BLOCK} too")
    if f < BLOCK:
        return f"the teacher's FFN size {f} is narrower than one {BLOCK}-wide block"
    return None


def candidates(teacher_config: Any, precisions: tuple[str, ...] = ("float32", "int8"), max_widths: int = 8,
               max_depths: int = 8, ffn_ratios: tuple[float, ...] = (1.0, 0.75, 0.5)) -> list[dict]:
    """Architectures of the teacher's family smaller than it: width a multiple of the head size,
    heads dividing the width, key/value heads the teacher's grouping allows (kv_heads_for), FFN a multiple
    of 8. A quantised candidate (int8, int4) keeps to the runtimes' 32-wide weight blocks (fake_quant.BLOCK):
    its width and FFN size are multiples of 32 (the FFN rounded, at most the teacher's rounded down), so that
    every weight's input is whole blocks and the int4 file gets LiteRT's blockwise recipe, what phones ship;
    where the teacher's sizes allow none (`block_problem`), it takes the float candidates' sizes. float32
    candidates come in both sizes, so no shape is searched in a quantised precision only."""
    from edgekd.quant.fake_quant import BLOCK

    a = arch_of(teacher_config)
    teacher_params = param_count(a)
    L_t, F_t = a["num_hidden_layers"], a["intermediate_size"]
    ffn_ratio_t = F_t / a["hidden_size"]
    precs = list(dict.fromkeys(normalize_precision(p) for p in precisions))
    floats, quantised = [p for p in precs if p == "float32"], [p for p in precs if p != "float32"]
    # (widths, FFN step, precisions): every precision on a plain grid of multiples of 8, or the quantised ones on
    # whole blocks (and float32 there too) where the teacher allows them
    blocked = block_problem(a) is None
    grids = [(_widths(a, max_widths), 8, floats + ([] if blocked else quantised))]
    if blocked:
        grids.append((_widths(a, max_widths, BLOCK), BLOCK, floats + quantised))
    out, seen = [], set()
    for widths, step, grid_precs in grids:
        top = F_t // step * step if step == BLOCK else None  # an aligned FFN stays within the teacher's
        for hd, h in widths if grid_precs else ():
            nh = h // hd
            for L in _spread(1, L_t, max_depths):
                for r in ffn_ratios:
                    f = max(step, int(round(ffn_ratio_t * r * h / step)) * step)
                    f = f if top is None else min(f, top)
                    arch = dict(zip(OVERRIDE_KEYS, (L, h, nh, kv_heads_for(nh, a), hd, f)))
                    if param_count({**a, **arch}) >= teacher_params:  # a student is smaller
                        continue
                    new = [p for p in grid_precs if (*arch.values(), p) not in seen]
                    seen.update((*arch.values(), p) for p in new)
                    out += [arch | {"precision": p} for p in new]
    return out


def _fails(t: Target, row: Mapping, max_params: Optional[int], train_params: Optional[int],
           narrowing: Optional[str]) -> list[str]:
    """The limits every candidate meets whatever it is budgeted on (cost_model.LIMITS)."""
    limits = (("size", row["size_mb"] > float(t.budget["max_model_mb"])),
              ("ram", row["peak_mem_mb"] > float(t.memory["ram_mb"]) * RAM_FRACTION),
              ("max_params", max_params is not None and row["params"] >= max_params),
              ("train_memory", train_params is not None and row["params"] > train_params),
              ("narrowing", narrowing is not None))
    return [why for why, bad in limits if bad]


def _row(c: dict, space: SearchSpace, teacher: dict, t: Target, model: CostModel, budget: Mapping, fmt: str,
         calibration, threads: Optional[int], max_params: Optional[int], train_params: Optional[int]) -> dict:
    """One candidate with the cost model's predicted numbers and the constraints it fails."""
    cfg = space.config(teacher, c)
    row = {**c, "params": space.params(cfg), **model.predict_row(cfg, t, c["precision"], budget, calibration,
                                                                 threads, fmt)}
    narrowing = space.narrowing(teacher, cfg)
    fails = model.misses(row, budget) + _fails(t, row, max_params, train_params, narrowing)
    return row | {"fits": not fails, "fails": ",".join(fails), "chosen": False,
                  **({"not_narrowing": narrowing} if narrowing else {})}


def search_student(teacher_config: Any, target: Target | str, budget: Optional[Mapping] = None, *,
                   cost_model: "str | CostModel" = "latency", calibration: Any = None,
                   max_params: Optional[int] = None, train_params: Optional[int] = None, fmt: str | None = None,
                   precisions: tuple[str, ...] | None = None, threads: int | None = None,
                   settings: Optional[Settings] = None) -> SearchResult:
    """Choose the student: the most parameters within the cost model's budget (the target's, with
    `budget`'s keys on top: {"latency_ms", "seq_len"} for `latency`; {"decode_tok_s", "ttft_ms",
    "prompt_len", "decode_len"} for `generation`), the target's max model size and RAM, fewer than
    `max_params` parameters when given (the job's strictly smaller student after a recalibration), at most
    `train_params` when given (what this machine can train: edgekd.distill.memory.trainable_params), and
    a narrowing of the teacher. `calibration`: the cost model's calibration, or None for the datasheet
    priors. Raises EdgekdError when nothing fits, naming the nearest candidate."""
    model = get_cost_model(cost_model)
    model.check_calibration(calibration)
    t = measured_target(target, settings)
    space = space_for(teacher_config)
    teacher = space.teacher(teacher_config)
    b = model.budget(t, budget)
    fmt = fmt or (calibration.fmt if calibration is not None else model.target_format(t))
    model.runtime(fmt)  # an unknown format: one line now
    table = [_row(c, space, teacher, t, model, b, fmt, calibration, threads, max_params, train_params)
             for c in space.candidates(teacher_config, tuple(precisions or model.precisions))]
    table.sort(key=lambda r: (-r["params"], -model.speed(r)))
    fitting = [r for r in table if r["fits"]]
    if not fitting:
        raise model.nothing_fits(table, t.name, b, max_params, describe)
    best = max(fitting, key=lambda r: (r["params"], -PRECISIONS.index(r["precision"]), model.speed(r)))
    best["chosen"] = True
    cfg = space.config(teacher, best)
    extras = model.search_extras(best, cfg, t, b, calibration, threads, fmt)
    return SearchResult(choice={k: best[k] for k in space.columns} | {"precision": best["precision"]}, table=table,
                        target=t.name, calibrated=calibration is not None, cost_model=model.name, budget=b, fmt=fmt,
                        quant_recipe=quant_recipe(fmt, best["precision"], cfg, teacher), space=space.name, **extras)


def quant_recipe(fmt: str, precision: str, student: Mapping, teacher: Mapping) -> Optional[dict]:
    """The weight recipe a searched student's `precision` file gets in `fmt`, and why (quant.recipe_words;
    where its sizes are not whole blocks, the teacher's sizes that forbade it, `block_problem`); None for
    float32 or a format edgekd has no weight recipes for (ONNX/TFLite: the converters' own int8)."""
    from edgekd.quant import RECIPES, recipe_words

    if (fmt, precision) not in RECIPES:
        return None
    return recipe_words(fmt, precision, student, block_problem(teacher))
