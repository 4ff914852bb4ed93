"""The search for people: the candidates table on the console and the search plot (search.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.io import atomic_path
from edgekd.search.spaces import SPACES
from edgekd.targets.cost_model import get_cost_model

SearchResult = Any  # edgekd.search.student.SearchResult (not imported: student.py imports this module)


def print_table(result: "SearchResult", max_rows: int = 24) -> None:
    """The candidates nearest the choice (by parameters), printed with rich."""
    from rich.table import Table

    from edgekd.console import out

    rows = [r for r in result.table if "narrowing" not in r["fails"].split(",")]  # the rest: candidates.csv
    i = next(k for k, r in enumerate(rows) if r["chosen"])
    lo = max(0, min(i - max_rows // 2, len(rows) - max_rows))
    shown = rows[lo:lo + max_rows]
    cal = "calibrated" if result.calibrated else "uncalibrated (datasheet priors)"
    model = get_cost_model(result.cost_model)
    space = SPACES[result.space]
    tab = Table(title=f"student candidates for {result.target}: budget {model.budget_title(result.budget, result.fmt)}, {cal}")
    for c in (*space.headers, "precision", "params", *(h for h, _, _ in model.shown), "MB", "peak MB", "fits"):
        tab.add_column(c, justify="right")
    for r in shown:
        style = "bold green" if r["chosen"] else (None if r["fits"] else "dim")
        pred = tuple(f.format(r[k]) for _, k, f in model.shown)
        tab.add_row(*(str(r[k]) for k in space.columns), r["precision"], f"{r['params'] / 1e6:.3g}M", *pred, f"{r['size_mb']:.1f}",
                    f"{r['peak_mem_mb']:.0f}", ("CHOSEN" if r["chosen"] else "yes") if r["fits"] else f"no ({r['fails']})",
                    style=style)
    console = out()
    console.print(tab)
    if len(result.table) > len(shown):
        console.print(f"({len(result.table) - len(shown)} more candidates in candidates.csv)")
    r = result.quant_recipe
    if r:
        console.print(f"{r['quantize']} {r['format']} weights: {r['recipe']}, {'blockwise' if r['blockwise'] else 'not blockwise'} "
                      f"({r['grain']}): {r['why']}", markup=False)


def plot_search(result: "SearchResult", path: str | Path) -> None:
    """Predicted latency (a generative search: decode tokens/s) against parameters, the budget line and
    the choice: the search at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, bound, label = get_cost_model(result.cost_model).plotted
    line, unit = result.budget.get(bound), label[label.rindex("(") + 1:-1]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for prec, color in (("float32", "tab:blue"), ("int8", "tab:orange"), ("int4", "tab:green")):
        ok = [r for r in result.table if r["precision"] == prec and r["fits"]]
        bad = [r for r in result.table if r["precision"] == prec and not r["fits"]]
        if not ok and not bad:
            continue
        ax.scatter([r["params"] for r in ok], [r[y] for r in ok], s=14, color=color, label=f"{prec}, fits")
        ax.scatter([r["params"] for r in bad], [r[y] for r in bad], s=14, facecolors="none",
                   edgecolors=color, alpha=0.5, label=f"{prec}, does not fit")
    if line is not None:
        ax.axhline(line, color="red", ls="--", lw=1, label=f"budget {line:g} {unit}")
    c = result.choice_row
    ax.scatter([c["params"]], [c[y]], marker="*", s=250, color="gold", edgecolors="black", zorder=5,
               label=f"choice: {SPACES[result.space].label(c)}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(label)
    cal = "calibrated" if result.calibrated else "uncalibrated"
    ax.set_title(f"student search on {result.target} ({cal})")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
