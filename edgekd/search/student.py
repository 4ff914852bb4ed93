"""Student search: the largest student of the teacher's family that the target can run in budget.

Candidates vary depth, width (a multiple of the head size), heads and FFN size, in float32 and int8;
each gets a predicted latency (the calibrated cost model for the target), a size and a peak memory.
The choice is the candidate with the most parameters that meets every constraint.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgekd.errors import EdgekdError
from edgekd.io import atomic_path, write_json, write_text
from edgekd.targets import latency as lat
from edgekd.targets.spec import Target, load_target

RAM_FRACTION = 0.5  # an app may use about half the device's RAM for one model
OVERRIDE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "intermediate_size")


@dataclass
class SearchResult:
    """`choice`: config overrides for the teacher's config plus "precision"; `table`: every candidate."""

    choice: dict
    table: list[dict]
    target: str
    latency_budget_ms: float
    predicted_ms: float
    calibrated: bool
    files: dict[str, str] = field(default_factory=dict)

    @property
    def choice_row(self) -> dict:
        return next(r for r in self.table if r["chosen"])

    def student_config(self, teacher_config: Any) -> dict:
        """The teacher's config dict with the choice applied in the family's own field names, per-layer
        lists cut to the chosen depth (edgekd.models.arch): `LlamaConfig(**result.student_config(t))`."""
        from edgekd.models.arch import with_arch

        base = dict(teacher_config) if isinstance(teacher_config, Mapping) else teacher_config.to_dict()
        return with_arch(base, {k: v for k, v in self.choice.items() if k != "precision"})


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
        widths = [k * hd for k in _spread(1, H_t // hd, max_widths)]
        for h in widths:
            nh = h // hd
            nkv = nh // group if nh % group == 0 else nh
            for L in _spread(1, L_t, max_depths):
                for r in ffn_ratios:
                    f = max(8, int(round(ffn_ratio_t * r * h / 8)) * 8)
                    arch = (L, h, nh, nkv, hd, f)
                    cfg = {**a, "num_hidden_layers": L, "hidden_size": h, "num_attention_heads": nh,
                           "num_key_value_heads": nkv, "head_dim": hd, "intermediate_size": f}
                    if arch in seen or lat.param_count(cfg) >= teacher_params:  # a student is smaller
                        continue
                    seen.add(arch)
                    for p in precisions:
                        out.append({"num_hidden_layers": L, "hidden_size": h, "num_attention_heads": nh,
                                    "num_key_value_heads": nkv, "head_dim": hd, "intermediate_size": f,
                                    "precision": lat.normalize_precision(p)})
    return out


def _resolve_calibration(t: Target, fmt: str, calibration: Any) -> lat.Calibration | None:
    """None: the saved calibration for this device and format, if it was ever measured."""
    if calibration is False:
        return None
    if calibration is None:
        return lat.load_calibration(t.key, fmt)
    if isinstance(calibration, (str, Path)):
        return lat.load_calibration(t.key, fmt, calibration)
    return calibration


def search_student(teacher_config: Any, target: Target | str, latency_budget_ms: float | None = None,
                   seq_len: int = 64, calibration: Any = None, out_dir: str | Path | None = None,
                   fmt: str | None = None, precisions: tuple[str, ...] = ("float32", "int8"),
                   threads: int | None = None, show: bool = True) -> SearchResult:
    """Choose the student: the most parameters within the latency budget (default: the target's),
    the target's max model size and RAM. `calibration`: a Calibration, a path, None (the device's
    saved one if any) or False (datasheet priors only). Raises EdgekdError when nothing fits."""
    t = load_target(target)
    fmt = fmt or t.runtime["preferred_format"]
    runtime = lat.runtime_for(fmt)
    budget = float(latency_budget_ms if latency_budget_ms is not None else t.budget["latency_ms"])
    if budget <= 0:
        raise EdgekdError(f"--latency-budget must be positive, got {budget}")
    cal = _resolve_calibration(t, fmt, calibration)
    teacher = lat.arch_of(teacher_config)
    max_mb, ram_mb = float(t.budget["max_model_mb"]), float(t.memory["ram_mb"]) * RAM_FRACTION
    table = []
    for c in candidates(teacher_config, precisions):
        cfg = {**teacher, **{k: c[k] for k in OVERRIDE_KEYS}}
        pred = lat.predict(cfg, t, seq_len, c["precision"], fmt, cal, threads)
        size = lat.model_size_mb(cfg, c["precision"])
        peak = lat.peak_memory_mb(cfg, seq_len, c["precision"], runtime)
        fails = [why for why, bad in (("latency", pred.total_ms > budget), ("size", size > max_mb),
                                      ("ram", peak > ram_mb)) if bad]
        table.append({**c, "params": lat.param_count(cfg), "predicted_ms": round(pred.total_ms, 4),
                      "size_mb": round(size, 3), "peak_mem_mb": round(peak, 2), "fits": not fails,
                      "fails": ",".join(fails), "chosen": False})
    table.sort(key=lambda r: (-r["params"], r["predicted_ms"]))
    fitting = [r for r in table if r["fits"]]
    if not fitting:
        fastest = min(table, key=lambda r: r["predicted_ms"])
        smallest = min(table, key=lambda r: (r["params"], r["predicted_ms"]))
        why = f"the smallest candidate ({_describe(smallest)}) is predicted at {smallest['predicted_ms']:.2f} ms"
        if fastest is not smallest:
            why += f", the fastest ({_describe(fastest)}) at {fastest['predicted_ms']:.2f} ms"
        other = sorted({f for r in table for f in r["fails"].split(",") if f and f != "latency"})
        limits = f"; also over the target's {'/'.join(other)} limit for some" if other else ""
        raise EdgekdError(f"no student fits {t.name} within {budget:g} ms: {why}{limits}; "
                          f"raise --latency-budget or pick a faster target")
    # Most parameters; among equals float32 before int8 (more accurate), then the faster.
    best = max(fitting, key=lambda r: (r["params"], r["precision"] == "float32", -r["predicted_ms"]))
    best["chosen"] = True
    choice = {k: best[k] for k in OVERRIDE_KEYS} | {"precision": best["precision"]}
    result = SearchResult(choice=choice, table=table, target=t.name, latency_budget_ms=budget,
                          predicted_ms=best["predicted_ms"], calibrated=cal is not None)
    if show:
        print_table(result)
    if out_dir is not None:
        result.files = save_search(result, out_dir)
    return result


def _describe(r: Mapping) -> str:
    return (f"{r['num_hidden_layers']} layers, hidden {r['hidden_size']}, {r['num_attention_heads']} heads, "
            f"ffn {r['intermediate_size']}, {r['precision']}, {r['params'] / 1e6:.2f}M params")


COLUMNS = ["num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
           "intermediate_size", "precision", "params", "predicted_ms", "size_mb", "peak_mem_mb", "fits", "fails",
           "chosen"]


def print_table(result: SearchResult, max_rows: int = 24) -> None:
    """The candidates nearest the choice (by parameters), printed with rich."""
    from rich.table import Table

    from edgekd.targets.cli import wide_console

    rows = result.table
    i = next(k for k, r in enumerate(rows) if r["chosen"])
    lo = max(0, min(i - max_rows // 2, len(rows) - max_rows))
    shown = rows[lo:lo + max_rows]
    cal = "calibrated" if result.calibrated else "uncalibrated (datasheet priors)"
    tab = Table(title=f"student candidates for {result.target}: budget {result.latency_budget_ms:g} ms, {cal}")
    for c in ("layers", "hidden", "heads", "kv", "ffn", "precision", "params", "pred ms", "MB", "peak MB", "fits"):
        tab.add_column(c, justify="right")
    for r in shown:
        style = "bold green" if r["chosen"] else (None if r["fits"] else "dim")
        tab.add_row(str(r["num_hidden_layers"]), str(r["hidden_size"]), str(r["num_attention_heads"]),
                    str(r["num_key_value_heads"]), str(r["intermediate_size"]), r["precision"],
                    f"{r['params'] / 1e6:.2f}M", f"{r['predicted_ms']:.2f}", f"{r['size_mb']:.1f}",
                    f"{r['peak_mem_mb']:.0f}", ("CHOSEN" if r["chosen"] else "yes") if r["fits"] else f"no ({r['fails']})",
                    style=style)
    console = wide_console()
    console.print(tab)
    if len(rows) > len(shown):
        console.print(f"({len(rows) - len(shown)} more candidates in candidates.csv)")


def save_search(result: SearchResult, out_dir: str | Path) -> dict[str, str]:
    """candidates.csv, candidates.json (with the choice) and search.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for r in result.table:
        w.writerow({k: r[k] for k in COLUMNS})
    write_text(out / "candidates.csv", buf.getvalue())
    write_json(out / "candidates.json", {"target": result.target, "latency_budget_ms": result.latency_budget_ms,
                                         "calibrated": result.calibrated, "choice": result.choice,
                                         "predicted_ms": result.predicted_ms, "candidates": result.table})
    plot_search(result, out / "search.png")
    return {"csv": str(out / "candidates.csv"), "json": str(out / "candidates.json"), "plot": str(out / "search.png")}


def plot_search(result: SearchResult, path: str | Path) -> None:
    """Predicted latency against parameters, the budget line and the choice: the search at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for prec, color in (("float32", "tab:blue"), ("int8", "tab:orange")):
        ok = [r for r in result.table if r["precision"] == prec and r["fits"]]
        bad = [r for r in result.table if r["precision"] == prec and not r["fits"]]
        ax.scatter([r["params"] for r in ok], [r["predicted_ms"] for r in ok], s=14, color=color,
                   label=f"{prec}, fits")
        ax.scatter([r["params"] for r in bad], [r["predicted_ms"] for r in bad], s=14, facecolors="none",
                   edgecolors=color, alpha=0.5, label=f"{prec}, does not fit")
    ax.axhline(result.latency_budget_ms, color="red", ls="--", lw=1, label=f"budget {result.latency_budget_ms:g} ms")
    c = result.choice_row
    ax.scatter([c["params"]], [c["predicted_ms"]], marker="*", s=250, color="gold", edgecolors="black", zorder=5,
               label=f"choice: {c['num_hidden_layers']}L h{c['hidden_size']} {c['precision']}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("predicted latency (ms)")
    cal = "calibrated" if result.calibrated else "uncalibrated"
    ax.set_title(f"student search on {result.target} ({cal})")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
