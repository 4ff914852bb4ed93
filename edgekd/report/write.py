"""report.json (the DESIGN keys), report.md and the PNG plots of a run, written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from edgekd.io import atomic_path, write_json, write_text
from edgekd.report.schema import SCHEMA_VERSION
from edgekd.report.sections import KindView, fmt, kind_view, register_kind, register_section, render_markdown, \
    status_banner
from edgekd.targets.spec import generation_budget_words


def build_report(*, config: dict, evals: dict, sizes: dict, histories: dict, temperature_examples: list,
                 init_info: dict, student_config: dict, latency: Optional[dict] = None,
                 exports: Optional[dict] = None, timings: Optional[dict] = None,
                 eval_curves: Optional[dict] = None, continuations: Optional[list] = None) -> dict:
    def entry(name):
        e = dict(evals.get(name, {}))
        e.update(sizes.get(name, {}))
        return e

    student = entry("student")
    student["config"] = student_config
    student["init"] = init_info
    rep = {
        "schema_version": SCHEMA_VERSION,
        "status": "complete",
        "target": config.get("target"),
        "latency_budget_ms": config.get("latency_budget_ms"),
        "teacher": entry("teacher"),
        "student": student,
        "scratch": entry("scratch"),
        "ce_only": entry("ce_only"),
        "latency": latency or {"predicted_ms": None, "measured": []},
        "exports": exports or {},
        "distillation": {
            "loss": config.get("loss"), "temperature": config.get("temperature"), "alpha": config.get("alpha"),
            "scheme": config.get("scheme"), "steps": config.get("steps"),
            "skipped_steps": {k: [h["step"] for h in v if h.get("skipped")] for k, v in histories.items()},
            "student_beats_scratch": (student.get("eval_loss") is not None and "eval_loss" in evals.get("scratch", {})
                                      and student["eval_loss"] < evals["scratch"]["eval_loss"]),
            "kd_vs_ce_only": kd_over_ce_only(evals),
            "eval_curves": eval_curves or {},
            "continuations": continuations or [],
        },
        "timings_s": timings or {},
    }
    return rep


def kd_over_ce_only(evals: dict) -> Optional[dict]:
    """What distillation bought over the same student trained on hard labels from the same start: the loss
    it saved, the perplexity ratio, the top-1 agreement it gained, and the share of the ce_only -> teacher
    loss gap it closed (None where ce_only was not trained or already matches the teacher)."""
    s, c, t = evals.get("student", {}), evals.get("ce_only", {}), evals.get("teacher", {})
    if "eval_loss" not in s or "eval_loss" not in c:
        return None
    gap = c["eval_loss"] - t.get("eval_loss", math.nan)
    gained = {f"{k}_gained": s[k] - c[k] for k in ("accuracy", "macro_f1", "chrf")  # a classifier's; seq2seq's chrF
              if s.get(k) is not None and c.get(k) is not None}
    return gained | {"loss_saved": c["eval_loss"] - s["eval_loss"],
            "perplexity_ratio": math.exp(s["eval_loss"] - c["eval_loss"]),
            "top1_agreement_gained": (s["top1_agreement"] - c["top1_agreement"]
                                      if s.get("top1_agreement") is not None and c.get("top1_agreement") is not None
                                      else None),
            "gap_closed": (c["eval_loss"] - s["eval_loss"]) / gap if gap > 0 else None}


def plot_losses(histories: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, hist in histories.items():
        xs = [h["step"] for h in hist if math.isfinite(h.get("ce", h["loss"]))]
        # Compare like with like: the hard-label CE part when the objective logs it, else the loss.
        ys = [h.get("ce", h["loss"]) for h in hist if math.isfinite(h.get("ce", h["loss"]))]
        label = f"{name} ({'hard-label CE' if hist and 'ce' in hist[0] else 'training loss'})"
        if len(ys) > 10:
            k = max(1, len(ys) // 50)
            ys = [sum(ys[max(0, i - k):i + 1]) / len(ys[max(0, i - k):i + 1]) for i in range(len(ys))]
        ax.plot(xs, ys, label=label)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title("Distilled student vs the baselines (ce_only: hard labels, same start; scratch: random start)")
    _save(fig, ax, path)


def _save(fig, ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_eval_curves(curves: dict, teacher_loss: Optional[float], path: Path) -> None:
    """Held-out loss over optimiser steps of the distilled student and its baselines, with the teacher's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, pts in curves.items():
        pts = [p for p in pts if math.isfinite(p["eval_loss"])]
        if pts:
            ax.plot([p["step"] for p in pts], [p["eval_loss"] for p in pts], marker="o", ms=3,
                    label=CURVE_LABELS.get(name, name))
    if teacher_loss is not None:
        ax.axhline(teacher_loss, color="black", ls="--", lw=1, label="teacher")
    finite = [p["eval_loss"] for pts in curves.values() for p in pts[1:] if math.isfinite(p["eval_loss"])]
    if finite and teacher_loss is not None:  # the start (random weights) would flatten the interesting part
        lo, hi = min(finite + [teacher_loss]), max(finite)
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("held-out loss")
    ax.set_title("Held-out loss while training (the same batches the report evaluates)")
    _save(fig, ax, path)


CURVE_LABELS = {"student": "distilled student", "ce_only": "ce_only (hard labels, same start)",
                "scratch": "scratch (hard labels, random start)"}


def plot_confusion(rep: dict, path: Path) -> None:
    """The held-out confusion matrices of the teacher, the distilled student and ce_only, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(n, rep[n]["confusion"]) for n in ("teacher", "student", "ce_only") if (rep.get(n) or {}).get("confusion")]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4.0), squeeze=False)
    for ax, (name, m) in zip(axes[0], shown):
        ax.imshow(m, cmap="Blues")
        k = len(m)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if m[i][j]:
                        ax.text(j, i, str(m[i][j]), ha="center", va="center", fontsize=6)
        acc = rep[name].get("accuracy")
        ax.set_title(f"{'distilled student' if name == 'student' else name} (accuracy {acc:.3f})", fontsize=9)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    fig.suptitle("Held-out confusion matrices")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_mistakes(examples: list, rep: dict, path: Path) -> None:
    """A grid of held-out images the teacher labels right and the distilled student wrong."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = (rep.get("config") or {}).get("id2label")
    name = (lambda i: str(names.get(str(i), i))) if isinstance(names, dict) else str
    cols = min(8, len(examples))
    rows = -(-len(examples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, ex in zip(axes.flat, examples):
        img = ex["pixels"].float()
        img = (img - img.min()) / (img.max() - img.min() + 1e-9)
        ax.imshow((img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy(), cmap="gray" if img.shape[0] == 1 else None)
        ax.set_title(f"{name(ex['label'])} -> {name(ex['student'])}", fontsize=8)
    fig.suptitle("Held-out images the teacher gets right and the student wrong (true -> student)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_temperature(examples: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not examples:
        return
    fig, axes = plt.subplots(1, len(examples), figsize=(4.5 * len(examples), 3.8), squeeze=False)
    for ax, ex in zip(axes[0], examples):
        for T, probs in ex["probs"].items():
            ax.plot(range(len(probs)), probs, marker="o", ms=3, label=f"T={T} (H={ex['entropy'][T]:.2f})")
        ax.set_xticks(range(len(ex["tokens"])))
        ax.set_xticklabels([repr(t)[1:-1][:8] for t in ex["tokens"]], rotation=70, fontsize=7)
        ctx = ex["context"].replace("\n", "⏎")[-30:]
        ax.set_title(f"…{ctx}", fontsize=8)
        ax.set_ylabel("teacher probability")
        ax.legend(fontsize=7)
    fig.suptitle("Teacher next-token distributions at several temperatures (top tokens)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# The engine's sections of report.md (edgekd.report.sections), by order: summary 10, verdict 20, ce_only 30,
# table 40, init 50, the teacher's tokenizer 60, skipped steps 130, continuations 140, translations 150, plots 160.
# Between them: the schemes' (70-100, distill/schemes/) and the job's (110-120, 200: report/job.py).
register_kind("causal-lm", KindView("perplexity"))
register_kind("seq2seq", KindView("chrf"))
register_kind("classifier", KindView("accuracy", (("macro-F1", "macro_f1", 3),)))


@register_section("summary", 10)
def _summary(rep: dict, kind: str) -> list[str]:
    d, gen = rep["distillation"], rep.get("generation")
    budget = (f"generation budget: **{generation_budget_words(gen['budget'])}**" if gen else
              f"latency budget: **{fmt(rep.get('latency_budget_ms'), 1)} ms**")
    return [f"Target: **{rep.get('target') or 'none'}**, {budget}. "
            f"Scheme `{d.get('scheme')}`, loss `{d.get('loss') or 'kd'}`, T = {fmt(d.get('temperature'), 3)}, "
            f"α = {fmt(d.get('alpha'), 2)}, {d.get('steps')} steps.", ""]


@register_section("verdict", 20)
def _verdict(rep: dict, kind: str) -> list[str]:
    s, b = rep["student"], rep["scratch"]
    if "eval_loss" not in s or "eval_loss" not in b:
        return []
    verdict = "below" if s["eval_loss"] < b["eval_loss"] else "NOT below"
    return [f"**The distilled student's held-out loss ({s['eval_loss']:.4f}) is {verdict} the scratch "
            f"baseline's ({b['eval_loss']:.4f})**, with the same architecture, data and steps.", ""]


@register_section("ce_only", 30)
def _against_ce_only(rep: dict, kind: str) -> list[str]:
    kd = rep["distillation"].get("kd_vs_ce_only")
    if not kd:
        return []
    closed = ("ce_only already reaches the teacher's held-out loss, so there is no gap to close (a teacher that "
              "is not better than its students is too weak to show what distillation buys)"
              if kd["gap_closed"] is None else f"closed **{kd['gap_closed']:.0%}** of the ce_only -> teacher loss gap")
    ratio = "" if "accuracy_gained" in kd else f" (perplexity x {kd['perplexity_ratio']:.3f})"
    labels = (f", {kd['accuracy_gained']:+.3f} accuracy and {fmt(kd.get('macro_f1_gained'), 3)} macro-F1"
              if "accuracy_gained" in kd else f", {kd['chrf_gained']:+.2f} chrF" if "chrf_gained" in kd else "")
    return [f"Against **ce_only** (the same student from the same start, data, steps and schedule on hard labels "
            f"alone), distillation saved {kd['loss_saved']:.4f} of held-out loss{ratio} and gained "
            f"{fmt(kd['top1_agreement_gained'], 3)} top-1 agreement with the teacher{labels}; {closed}.", ""]


@register_section("table", 40)
def _table(rep: dict, kind: str) -> list[str]:
    view = kind_view(kind)
    extra = "".join(f" {h} |" for h, _, _ in view.extra)
    lines = [f"| model | params | size (MB) | held-out loss | {view.metric} |{extra} top-1 agreement "
             f"with teacher |", "|---|---:|---:|---:|---:|---:|" + "---:|" * len(view.extra)]
    rows = (("teacher", rep["teacher"]), ("distilled student", rep["student"]),
            ("ce_only baseline", rep.get("ce_only") or {}), ("scratch baseline", rep["scratch"]))
    for name, e in ((n, e) for n, e in rows if e or n != "ce_only baseline"):
        cells = "".join(f" {fmt(e.get(k), nd)} |" for _, k, nd in view.extra)
        lines.append(f"| {name} | {e.get('params', 0):,} | {fmt(e.get('size_mb'), 2)} | {fmt(e.get('eval_loss'))} | "
                     f"{fmt(e.get(view.metric), 3)} |{cells} {fmt(e.get('top1_agreement'), 3)} |")
    return lines + _file_rows(rep, view) + [""]


def files_measured(rep: dict) -> list[tuple[str, dict]]:
    """The exports whose own quality was measured in their runtime (report.json `exports` records with
    `eval_loss`), by key."""
    return [(k, e) for k, e in (rep.get("exports") or {}).items() if e.get("eval_loss") is not None]


def _file_rows(rep: dict, view: KindView) -> list[str]:
    """The quality table's rows of the exported files, each run in its own runtime on this machine, and of the
    PyTorch float student on the same (fewer) held-out tokens or sentences, with what they are."""
    files = files_measured(rep)
    if not files:
        return []
    params = rep["student"].get("params", 0)
    on = files[0][1]["quality_on"]

    def row(name: str, e: dict, size) -> str:
        cells = "".join(f" {fmt(e.get(k), nd)} |" for _, k, nd in view.extra)
        return (f"| {name} † | {params:,} | {fmt(size, 2)} | {fmt(e.get('eval_loss'))} | {fmt(e.get(view.metric), 3)} |"
                f"{cells} {fmt(e.get('top1_agreement_teacher'), 3)} |")

    unit = "sentences" if "sentences" in on else "tokens"  # a classifier's files are scored on sentences
    lines = [row(f"distilled student, PyTorch float (on the files' {on.get('unit', unit)})", files[0][1]["pytorch_float"],
                 rep["student"].get("size_mb"))]
    for k, e in files:
        if e.get("pytorch_quant_aware"):  # built from a quantisation-aware student: that PyTorch model beside it
            lines.append(row(f"{k}: its quantisation-aware student, PyTorch fake-quant (the file's weights and "
                             f"activation quantisation)", e["pytorch_quant_aware"], None))
        lines.append(row(f"{k}: the {e['precision']} file in {e['quality_on']['runtime']}", e, e.get("size_mb")))
    whole = rep["student"].get("eval_examples" if unit == "sentences" else "eval_tokens")
    words = on.get("unit", unit)  # a classifier's examples: sentences, or an image classifier's images
    return lines + ["", f"† Measured on {on['source']}: {on[unit]:,} scored {words}"
                        + (f" (the rows above: all {whole:,} held-out {words})" if whole else "")
                        + ". Each exported file ran in its own runtime on this machine, and the PyTorch float student "
                          f"on exactly the same {words}."]


@register_section("init", 50)
def _init(rep: dict, kind: str) -> list[str]:
    init = rep["student"].get("init", {})
    if init.get("method") == "teacher" and isinstance(init.get("layers"), dict):  # an encoder-decoder's two stacks
        return [f"The student was initialised from the teacher: encoder layers {init['layers']['encoder']}, "
                f"decoder layers {init['layers']['decoder']} (every k-th); width {init.get('width')}.", ""]
    if init.get("method") == "teacher" and "copied_tensors" in init:  # an image student (init_from_image_teacher)
        how = ("the channels of each width that fire most (mean |activation| on training images)"
               if init.get("channels") == "mean |activation|" else "the first channels of each width")
        return [f"The student was initialised from the teacher: {init['copied_tensors']} of its {init['of']} tensors "
                f"from the teacher's (each stage's first blocks; {init.get('narrowed_tensors', 0)} of them narrowed "
                f"to {how}), the rest random.", ""]
    if init.get("method") == "teacher":
        return [f"The student was initialised from the teacher: layers {init.get('layers')} (every k-th), "
                f"{init.get('hidden_kept')} hidden channels kept by measured activation magnitude.", ""]
    if init.get("why"):
        return [f"**The student started from random weights**: {init['why']}.", ""]
    return []


@register_section("teacher_tokenizer", 60)
def _teacher_tokenizer(rep: dict, kind: str) -> list[str]:
    t = rep["teacher"]
    if "eval_loss_own_tokens" not in t:
        return []
    return [f"The teacher has another tokenizer than the student: its held-out loss above is its loss on the same "
            f"text in nats per student token ({fmt(t['eval_loss_own_tokens'])} per its own token, "
            f"{t.get('eval_tokens_own')} of them against the student's {t.get('eval_tokens')}); top-1 agreement "
            f"has no meaning across vocabularies.", ""]


@register_section("skipped_steps", 130)
def _skipped(rep: dict, kind: str) -> list[str]:
    skipped = {k: v for k, v in rep["distillation"].get("skipped_steps", {}).items() if v}
    return [f"Skipped (non-finite) steps: {skipped}", ""] if skipped else []


@register_section("continuations", 140)
def _continuations(rep: dict, kind: str) -> list[str]:
    return _continuations_section(rep["distillation"].get("continuations") or [])


@register_section("translations", 150)
def _translations(rep: dict, kind: str) -> list[str]:
    return _translations_section(rep["distillation"].get("translations") or [])


@register_section("plots", 160)
def _plots(rep: dict, kind: str) -> list[str]:
    if kind == "classifier":  # no next-token distributions: the held-out confusion matrices instead
        return ["## Plots", "", "![held-out loss](plots/eval_curves.png)", "", "![loss curves](plots/loss_curves.png)",
                "", "![confusion matrices](plots/confusion.png)", "",
                "Rows are the true classes, columns the predicted ones, on the held-out examples.", ""] + (
            ["![teacher right, student wrong](plots/mistakes.png)", "",
             f"{rep['distillation']['teacher_right_student_wrong']} held-out images the teacher labels right and the "
             f"distilled student wrong (some shown: true -> the student's label).", ""]
            if rep.get("distillation", {}).get("teacher_right_student_wrong") else [])
    return ["## Plots", "", "![held-out loss](plots/eval_curves.png)", "", "![loss curves](plots/loss_curves.png)", "",
            "![temperature](plots/temperature.png)", "",
            "Higher temperatures flatten the teacher's distribution, exposing how it ranks the wrong answers "
            "(the 'dark knowledge' the student learns from).", ""]


def _cell(text: str) -> str:
    """Model output as one markdown table cell: newlines shown, pipes and backticks escaped."""
    return "`" + text.replace("`", "'").replace("|", "\\|").replace("\n", "⏎ ") + "`" if text else "—"


def _continuations_section(examples: list) -> list[str]:
    return _side_by_side(examples, "Held-out continuations", "prompt", "Prompt", "continuation", "held-out text",
                         f"Greedy continuations of held-out prompts ({len(examples)} of them), beside the text that "
                         f"really followed (⏎ is a newline).", cut=-160)


def _translations_section(examples: list) -> list[str]:
    return _side_by_side(examples, "Held-out translations", "source", "Source", "translation", "reference",
                         f"Greedy translations of held-out sentences ({len(examples)} of the sentences chrF is "
                         f"measured on), beside the reference.")


def _side_by_side(examples: list, title: str, key: str, key_label: str, column: str, reference: str, intro: str,
                  cut: int = 0) -> list[str]:
    """Each example's input, then a table of the reference and each model's output (teacher, student, ce_only)."""
    if not examples:
        return []
    names = [n for n in ("teacher", "student", "ce_only") if n in examples[0]]
    lines = [f"## {title}", "", intro, ""]
    for i, ex in enumerate(examples, 1):
        lines += [f"**{key_label} {i}**: {_cell(ex[key][cut:])}", "", f"| | {column} |", "|---|---|",
                  f"| {reference} | {_cell(ex.get('reference', ''))} |"]
        lines += [f"| {CURVE_LABELS.get(n, n).split(' (')[0]} | {_cell(ex[n])} |" for n in names]
        lines.append("")
    return lines


def mark_status(run_dir: Path, status: str, error: Optional[str] = None, rep: Optional[dict] = None) -> None:
    """Say at the top of report.json and report.md that the run failed or was interrupted.

    `rep`: the report in memory, if the caller has one; else the run's report.json, else a stub.
    """
    import json

    run_dir = Path(run_dir)
    if rep is None:
        try:
            rep = json.loads((run_dir / "report.json").read_text())
        except (OSError, ValueError):
            rep = None
    if not isinstance(rep, dict):
        rep = {}
    rep = {"status": status, **({"error": error} if error else {}),
           **{k: v for k, v in rep.items() if k not in ("status", "error")}}
    write_json(run_dir / "report.json", rep)
    if "distillation" in rep and "teacher" in rep:
        text = render_markdown(rep, rep.get("kind", "causal-lm"))
    else:
        text = "\n".join(["# edgekd run report", ""] + status_banner(rep))
    write_text(run_dir / "report.md", text + "\n")


def write_run_report(run_dir: Path, rep: dict, histories: dict, temperature_examples: list, kind: str = "causal-lm",
                     mistakes: dict | None = None) -> None:
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_losses(histories, plots / "loss_curves.png")
    plot_eval_curves(rep.get("distillation", {}).get("eval_curves") or {}, rep.get("teacher", {}).get("eval_loss"),
                     plots / "eval_curves.png")
    plot_temperature(temperature_examples, plots / "temperature.png")
    if kind == "classifier":
        plot_confusion(rep, plots / "confusion.png")
    if mistakes and mistakes["examples"]:
        plot_mistakes(mistakes["examples"], rep, plots / "mistakes.png")
    write_json(run_dir / "report.json", rep)
    write_text(run_dir / "report.md", render_markdown(rep, kind))
