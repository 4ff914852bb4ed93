"""The one-command job's part of report.json (built here, from the job's facts), report.md's job
section, and the summary lines the job prints: report/ is the one place that shapes the report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edgekd.console import echo
from edgekd.io import write_json, write_text
from edgekd.precision import precision_of
from edgekd.report.sections import fmt, register_section, render_markdown
from edgekd.report.write import files_measured
from edgekd.search.spaces import IMAGE, SPACES, TRANSFORMER
from edgekd.targets.spec import generation_budget_words, generation_misses


def measured_precision(m: dict) -> str:
    """A measured entry's precision (older reports carry only the quantize recipe)."""
    return m.get("precision") or precision_of(m.get("quantize") or "none")


@dataclass
class JobFacts:
    """What the job learnt, for its report: the search, the exports, the measurements and what it used."""

    target: str
    search: Any                      # the final edgekd.search.SearchResult
    attempts: list                   # one row per distilled student (attempt, choice, params, predicted_ms, ...)
    fmt: str
    runtime: str
    seq_len: int
    threads: Optional[int]
    exports: dict                    # edgekd.export.export_run's records
    measured: list                   # latency.measured entries (local and on the device)
    timings: dict                    # the job's PhaseTimer summary
    calibration: dict                # source (priors | file | saved | recalibrated), path, values
    target_facts: dict               # name, path, facts (the tables used), measured (the host's keys)
    search_dir: str = "search"       # where SearchResult.save put its files, relative to the run
    device_error: Optional[str] = None
    shrink_stopped: Optional[str] = None
    device_note: Optional[str] = None  # how the device's profiles differed from the target's (an emulated board's threads)
    extra: dict = field(default_factory=dict)


def _latency(f: JobFacts) -> dict:
    res, final = f.search, f.attempts[-1]
    budget, on_target = res.latency_budget_ms, final["measured_ms"]
    lat = {"predicted_ms": res.predicted_ms, "format": f.fmt, "runtime": f.runtime, "precision": res.precision,
           "seq_len": f.seq_len, "threads": f.threads, "calibrated": res.calibrated,
           "meets_budget_predicted": None if res.predicted_ms is None else res.predicted_ms <= budget,
           "measured_on_target_ms": on_target,
           "meets_budget_measured": None if on_target is None else on_target <= budget, "measured": f.measured}
    for k in ("device_error", "shrink_stopped", "device_note"):
        if getattr(f, k):
            lat[k] = getattr(f, k)
    return lat


def _meets(numbers: Optional[dict], budget: dict) -> Optional[bool]:
    """Whether generation numbers (decode_tok_s, ttft_ms) meet every stated budget; None without numbers."""
    return None if numbers is None else not generation_misses(numbers, budget)


def runtime_choice(measured: list, precision: str) -> dict:
    """Per device where both LLM runtimes' files at the deployed precision were measured: which one to ship there
    (`ship`, None where the measurements cannot say) and why: the faster by median decode tokens/s of those that pass
    generation parity there (a device's own check where it ran one, else the one here); an emulated device's times
    choose nothing."""
    by_device: dict = {}
    for m in measured:
        if measured_precision(m) == precision:
            by_device.setdefault(m["device"], {})[m["format"]] = m
    out = {}
    for device, rows in by_device.items():
        if len(rows) < 2:
            continue
        ok = {k: m for k, m in rows.items() if (m.get("parity") or {}).get("passed") is not False}
        failed = [k for k in rows if k not in ok]
        bad = f"; the {' and '.join(failed)} {precision} file failed generation parity there" if failed else ""
        if not ok:
            out[device] = {"ship": None, "why": f"neither runtime's {precision} file passed generation parity there"}
        elif any(m.get("emulated") for m in rows.values()):
            one = next(iter(ok)) if len(ok) == 1 else None
            out[device] = {"ship": one, "why": (f"the only one that passes generation parity there{bad}" if one else
                                                "both pass generation parity there, and an emulated device's times "
                                                "cannot say which is faster: measure them on the real device")}
        else:
            speed = {k: m.get("decode_tok_s") or 0.0 for k, m in ok.items()}
            best = max(speed, key=speed.get)
            others = ", ".join(f"{k} {v:.1f}" for k, v in speed.items() if k != best)
            out[device] = {"ship": best, "decode_tok_s": speed,
                           "why": f"{best} decodes {speed[best]:.1f} tok/s at {precision}"
                                  + (f" against {others}" if others else "") + ", and passes generation parity there"
                                  + bad}
    return out


def _generation(f: JobFacts) -> dict:
    """report.json's `generation`: the budget, the chosen student's prediction, every measurement, and
    whether the deployed export (the searched format and precision, on the target) meets the budget."""
    g, final = f.search.generation, f.attempts[-1]
    on_target = next((m for m in f.measured if m.get("on_target") and m["format"] == f.fmt
                      and measured_precision(m) == f.search.precision), None)
    return {"budget": g["budget"], "format": f.fmt, "runtime": f.runtime, "precision": f.search.precision,
            "threads": f.threads, "calibrated": f.search.calibrated, "predicted": g["predicted"],
            "meets_budget_predicted": _meets(g["predicted"], g["budget"]), "measured": f.measured,
            "measured_on_target": final.get("measured"), "meets_budget_measured": _meets(final.get("measured"),
                                                                                       g["budget"]),
            "on_target_profile": None if on_target is None else on_target.get("profile"),
            "runtime_choice": runtime_choice(f.measured, f.search.precision)}


def _generation_latency(f: JobFacts, gen: dict) -> dict:
    """`latency` of a generative job: time to first token, the LLM's latency, in the logits job's keys."""
    on = gen["measured_on_target"]
    lat = {"predicted_ms": gen["predicted"]["ttft_ms"], "metric": "ttft_ms", "format": f.fmt, "runtime": f.runtime,
           "precision": f.search.precision, "seq_len": gen["budget"]["prompt_len"], "threads": f.threads,
           "calibrated": f.search.calibrated, "meets_budget_predicted": gen["meets_budget_predicted"],
           "measured_on_target_ms": None if on is None else on["ttft_ms"],
           "meets_budget_measured": gen["meets_budget_measured"],
           "measured": [m | {"p50_ms": m["ttft_ms"]} for m in f.measured]}
    for k in ("device_error", "shrink_stopped", "device_note"):
        if getattr(f, k):
            lat[k] = getattr(f, k)
    return lat


def _problem(rep: dict, f: JobFacts) -> Optional[str]:
    """Why the job failed (a device error, failed parity, the budget missed on the device), or None."""
    failed = [f"{name}: {e.get('error', 'failed')}" for name, e in f.exports.items() if not e.get("passed")]
    lat = rep["latency"]
    if f.device_error:
        return f.device_error
    if failed:
        return f"export parity failed ({'; '.join(failed)})"
    on_device = [m["parity"].get("error", f"{m['format']}-{m['precision']} failed parity on {m['device']}")
                 for m in f.measured if (m.get("parity") or {}).get("passed") is False]
    if on_device:
        return "; ".join(on_device)
    gen = rep.get("generation")
    if gen and gen["meets_budget_measured"] is False:
        m, b = gen["measured_on_target"], gen["budget"]
        return (f"the device missed the generation budget: {m['decode_tok_s']:.1f} tok/s decode, {m['ttft_ms']:.2f} ms "
                f"TTFT measured against {generation_budget_words(b)}, after {len(f.attempts) - 1} recalibrate-and-shrink "
                f"round(s)")
    if lat["meets_budget_measured"] is False:
        return (f"the device missed the budget: {lat['measured_on_target_ms']:.3f} ms measured > "
                f"{f.search.latency_budget_ms:g} ms after {len(f.attempts) - 1} recalibrate-and-shrink round(s)")
    return None


def build_job_report(engine: dict, f: JobFacts) -> dict:
    """report.json of the job: the engine's report (RunResult.report) with the job's keys filled in."""
    res, d = f.search, f.search_dir
    rep = dict(engine)
    rep["target"] = f.target
    if res.generation:
        rep["generation"] = _generation(f)
        rep["latency_budget_ms"] = res.generation["budget"].get("ttft_ms")
        rep["latency"] = _generation_latency(f, rep["generation"])
    else:
        rep["latency_budget_ms"] = res.latency_budget_ms
        rep["latency"] = _latency(f)
    rep["exports"] = f.exports
    searched = bool(res.table)  # else a student given as it is (--student bilstm): no candidates, no files
    rep["search"] = {"table": f"{d}/candidates.csv" if searched else None,
                     "json": f"{d}/candidates.json" if searched else None,
                     "plot": f"{d}/search.png" if searched else None, "choice": res.choice,
                     "predicted_ms": res.predicted_ms, "params": f.attempts[-1]["params"],
                     "calibrated": res.calibrated, "candidates": len(res.table), "attempts": f.attempts,
                     "quant_recipe": res.quant_recipe, "space": res.space, "held_back_by_memory": _held_back(res)}
    rep["calibration"] = f.calibration
    rep["target_facts"] = f.target_facts
    rep["timings_s"] = {**rep.get("timings_s", {}), "job": f.timings}
    rep["student"] = {**rep["student"], "precision_deployed": res.precision}
    if rep.get("distillation", {}).get("quant_aware"):
        rep["distillation"] = {**rep["distillation"],
                               "quant_aware": quant_aware_files(rep["distillation"]["quant_aware"], f.exports, f.fmt)}
    rep.update(f.extra)
    problem = _problem(rep, f)
    rep["status"] = "failed" if problem else "complete"
    rep.pop("error", None)
    if problem:
        rep["error"] = problem
    return rep


def quant_aware_files(engine: dict, exports: dict, fmt: str) -> dict:
    """report.json's `distillation.quant_aware` (DESIGN.md): for the file that ships (the target's format, `fmt`),
    its `precision`, `recipe` and QAD `steps`, and the three files measured in the same runtime on the same
    held-out tokens: `float` (the float export), `ptq` (the float student quantised after training) and `qad`
    (the quantisation-aware student's, the one that ships), each with `eval_loss`, `perplexity`, `path` and the
    prompts it continues exactly as its PyTorch model; what QAD saved and the share of the ptq -> float gap it
    closed. `by_export` has the same for every quantised export (each runtime's, from its own QAD student)
    with the engine's record of its training."""
    def file(e: dict, matched) -> dict:
        return {"path": e.get("path"), "eval_loss": e.get("eval_loss"), "perplexity": e.get("perplexity"),
                "prompts_matched": matched, "passed": e.get("passed"), **({"error": e["error"]} if e.get("error") else {})}

    by = {}
    for key, r in engine["by_export"].items():
        qad = exports.get(key) or {}
        flt, ptq = exports.get(r["format"]) or {}, qad.get("ptq") or {}
        files = {"float": file(flt, flt.get("prompts_matched")),
                 "ptq": file(ptq, ptq.get("prompts_matched")), "qad": file(qad, qad.get("prompts_matched"))}
        loss = {k: v["eval_loss"] for k, v in files.items()}
        known = all(v is not None for v in loss.values())
        gap = loss["ptq"] - loss["float"] if known else None
        by[key] = r | files | {
            "precision": qad.get("precision"), "measured_in": (qad.get("quality_on") or {}).get("runtime"),
            "prompts": qad.get("prompts"), "qad_vs_float_student": (qad.get("vs_float") or {}).get("prompts_matched"),
            "qad_saved": loss["ptq"] - loss["qad"] if known else None,
            "gap_closed": (loss["ptq"] - loss["qad"]) / gap if known and gap > 0 else None,
            "compared_with": {"float": "the float student (its float export)", "ptq": "the float student",
                              "qad": "its quantisation-aware student in PyTorch fake-quant"}}
    shipped = next((k for k, r in by.items() if r["format"] == fmt), next(iter(by), None))
    top = {k: by[shipped][k] for k in ("precision", "recipe", "recipe_name", "steps", "float", "ptq", "qad", "qad_saved",
                                       "gap_closed", "measured_in", "prompts")} if shipped else {}
    return top | {"shipped": shipped, "by_export": by}


@register_section("quant_aware", 16)
def _quant_aware_section(rep: dict, kind: str) -> list[str]:
    """report.md: what quantisation-aware distillation bought, per quantised export, through the files."""
    qa = (rep.get("distillation") or {}).get("quant_aware")
    if not qa or "float" not in qa:  # the engine alone measures no files
        quantised = [k for k, e in (rep.get("exports") or {}).items() if e.get("precision") not in (None, "float32")]
        if quantised and rep.get("generation") and (rep.get("job") or {}).get("quant_aware") is False:
            return ["The quantised files hold the float student quantised after training (--no-quant-aware): their "
                    "parity is judged against the float student with the quantised bounds.", ""]
        return []
    lines = ["### Quantisation-aware distillation", "",
             "Each quantised file is built from a student distilled into its runtime's numbers after float "
             "distillation; the float student quantised after training (ptq) was exported and measured beside it. "
             "Held-out loss of each file, run in its own runtime, on the same tokens:", "",
             "| export | recipe | QAD steps | float file | ptq file | QAD file | QAD saved | ptq → float gap closed | "
             "prompts continued exactly: ptq vs float student / QAD vs its student |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for key, r in qa["by_export"].items():
        n = r.get("prompts")
        of = f" of {n}" if n else ""
        closed = "—" if r.get("gap_closed") is None else f"{r['gap_closed']:.0%}"
        lines.append(f"| {key} | {r.get('recipe_name')} | {r.get('steps')} | {fmt(r['float']['eval_loss'])} | "
                     f"{fmt(r['ptq']['eval_loss'])} | {fmt(r['qad']['eval_loss'])} | {fmt(r.get('qad_saved'))} | {closed} | "
                     f"{fmt(r['ptq']['prompts_matched'], 0)}{of} / {fmt(r['qad']['prompts_matched'], 0)}{of} |")
    return lines + ["", "The gap closed is (ptq - QAD) / (ptq - float): near 0 or negative, QAD bought no held-out loss "
                        "at this size; above 100%, the QAD steps also trained the student further than the float "
                        "student's steps did. The prompts column is what each file's parity check holds it to: the ptq "
                        "file against the float student, the QAD file against its own student in PyTorch fake-quant.",
                    ""]


def failure_message(rep: dict, out: Path) -> Optional[str]:
    """The JobFailed line for a failed job's report, or None when it succeeded."""
    if rep.get("status") != "failed":
        return None
    where = "holds the local results" if rep["latency"].get("device_error") else "records the numbers"
    return f"{rep['error']}; the run {out} {where}"


def write_job_report(out: Path, rep: dict) -> None:
    """report.json and report.md of the finished job (the engine's plots are already written; a generative
    job adds plots/generation.png)."""
    if rep.get("generation"):
        plot_generation(rep, out / "plots" / "generation.png")
    write_json(out / "report.json", rep)
    write_text(out / "report.md", render_markdown(rep, rep.get("kind", "causal-lm")) + "\n")


def _gen_words(n: dict) -> str:
    return f"{n['decode_tok_s']:.1f} tok/s decode, {n['ttft_ms']:.2f} ms TTFT"


def shipped(rep: dict) -> Optional[tuple[str, dict]]:
    """(key, record) of the export that ships: the searched precision in the target's format."""
    want = rep.get("generation") or rep.get("latency") or {}
    return next(((k, e) for k, e in (rep.get("exports") or {}).items()
                 if e.get("format") == want.get("format") and e.get("precision") == want.get("precision")), None)


def shipped_quality_words(rep: dict, bold: bool = False) -> Optional[str]:
    """The shipped file's own quality in its runtime beside the PyTorch float student's on the same tokens, in
    words (report.md's headline, the console's summary); None where no export was measured."""
    if not files_measured(rep):
        return None
    b = "**" if bold else ""
    found = shipped(rep)
    if found is None or found[1].get("eval_loss") is None:
        key = "" if found is None else f" ({found[0]}{': ' + found[1]['error'] if found[1].get('error') else ''})"
        return f"{b}The file that ships{key} has no quality measured in its runtime{b}."
    k, e = found
    p, on = e["pytorch_float"], e["quality_on"]
    if e.get("accuracy") is not None:  # a classifier's file
        return (f"{b}The file that ships, {k} (`{e['path']}`), run in {on['runtime']} on this machine: held-out "
                f"accuracy {e['accuracy']:.3f}, macro-F1 {e['macro_f1']:.3f}{b}; the PyTorch float student it was "
                f"built from scores {p['accuracy']:.3f} and {p['macro_f1']:.3f} on the same {on['sentences']:,} "
                f"held-out {on.get('unit', 'sentences')}, and the file gives PyTorch's label on {e['top1_agreement_pytorch']:.1%} of them.")
    d = e["eval_loss_vs_pytorch"]
    agree = lambda x: "—" if x.get("top1_agreement_teacher") is None else f"{x['top1_agreement_teacher']:.3f}"  # noqa: E731
    q = e.get("pytorch_quant_aware")
    qad = "" if not q else (f"; it was built from the quantisation-aware student (`{e.get('model_dir')}`), which scores "
                            f"{q['eval_loss']:.4f} in PyTorch with the file's weights")
    return (f"{b}The file that ships, {k} (`{e['path']}`), run in {on['runtime']} on this machine: held-out loss "
            f"{e['eval_loss']:.4f} (perplexity {e['perplexity']:.3f}), top-1 agreement with the teacher "
            f"{agree(e)}{b}{qad}; the PyTorch float student {'distilled before it' if q else 'it was built from'} "
            f"scores {p['eval_loss']:.4f} (perplexity "
            f"{p['perplexity']:.3f}), {agree(p)} on the same {on['tokens']:,} held-out tokens: the file's loss is "
            f"{abs(d):.4f} {'higher' if d > 0 else 'lower' if d < 0 else 'the same'}"
            f"{'' if d == 0 else f' (perplexity x {math.exp(d):.3f})'}.")


@register_section("shipped", 15)
def _shipped_section(rep: dict, kind: str) -> list[str]:
    words = shipped_quality_words(rep, bold=True)
    return [words, ""] if words else []


def print_summary(out: Path, rep: dict) -> None:
    """The job's last lines on the console: the student against the budget, the losses, where it is."""
    lat, s, b, gen = rep["latency"], rep["student"], rep["scratch"], rep.get("generation")
    if gen:
        line = (f"{rep['target']}: student {s['params']:,} params {gen['precision']} predicted {_gen_words(gen['predicted'])} "
                f"({gen['format']}; budget {generation_budget_words(gen['budget'])})")
        if gen["measured_on_target"] is not None:
            line += f", measured {_gen_words(gen['measured_on_target'])} on the device"
        local = [m for m in gen["measured"] if m["device"] == "local" and m["format"] == gen["format"]
                 and measured_precision(m) == gen["precision"]]
        if local and gen["measured_on_target"] is None:
            line += f"; {_gen_words(local[0])} on this machine"
    else:
        predicted = ("given as it is, not predicted" if lat["predicted_ms"] is None else
                     f"predicted {lat['predicted_ms']:.2f} ms")
        line = f"{rep['target']}: student {s['params']:,} params {predicted} (budget {rep['latency_budget_ms']:g} ms)"
        if lat["measured_on_target_ms"] is not None:
            line += f", measured {lat['measured_on_target_ms']:.2f} ms on the device"
    echo(line)
    if "eval_loss" in s and "eval_loss" in b:
        c = rep.get("ce_only") or {}
        ce = f", ce_only {c['eval_loss']:.4f}" if "eval_loss" in c else ""
        echo(f"held-out loss (PyTorch float): distilled {s['eval_loss']:.4f} vs teacher {rep['teacher']['eval_loss']:.4f}"
             f"{ce}, scratch {b['eval_loss']:.4f}")
    words = shipped_quality_words(rep)
    if words:
        echo(words)
    if s.get("accuracy") is not None:  # a classifier's
        line = ", ".join(f"{name} {rep[k]['accuracy']:.3f} / {rep[k]['macro_f1']:.3f}" for k, name in
                         (("teacher", "teacher"), ("student", "distilled"), ("ce_only", "ce_only"), ("scratch", "scratch"))
                         if (rep.get(k) or {}).get("accuracy") is not None)
        echo(f"held-out accuracy / macro-F1: {line}")
    echo(f"job written to {out} (report.md, report.json, student/, export/, profile/, search/)")


# The job's sections of report.md (edgekd.report.sections): a logits job's latency and exports tables
# (a generative job's are in its target section) after the engine's, and the target section last.
@register_section("latency", 110)
def _latency_section(rep: dict, kind: str) -> list[str]:
    lat = rep.get("latency") or {}
    if not lat.get("measured") or rep.get("generation"):
        return []
    lines = ["## Latency", "", "| device | format | precision | p50 (ms) | p90 (ms) |", "|---|---|---|---:|---:|"]
    for m in lat["measured"]:
        lines.append(f"| {m.get('device')} | {m.get('format')} | {measured_precision(m)} | "
                     f"{fmt(m.get('p50_ms'), 2)} | {fmt(m.get('p90_ms'), 2)} |")
    return lines + [""]


@register_section("exports", 120)
def _exports_section(rep: dict, kind: str) -> list[str]:
    if not rep.get("exports") or rep.get("generation"):
        return []
    lines = ["## Exports", "", "| format | path | max abs diff | top-1 agreement |", "|---|---|---:|---:|"]
    for name, e in rep["exports"].items():
        lines.append(f"| {name} | {e.get('path')} | {fmt(e.get('max_abs_diff'), 6)} | "
                     f"{fmt(e.get('top1_agreement'), 3)} |")
    return lines + [""]


@register_section("target", 200)
def _target_section(rep: dict, kind: str) -> list[str]:
    return ["", render_target_section(rep)] if rep.get("search") else []


def render_target_section(rep: dict) -> str:
    """report.md's job part: the choice, latency (or generation) predicted against measured, the search plot."""
    if rep.get("generation"):
        return render_generation_section(rep)
    lat, s = rep["latency"], rep["search"]
    budget = rep["latency_budget_ms"]
    c = s["choice"]
    size = ((rep.get("student") or {}).get("config") or {}).get("image_size")
    unit = (f"one {size}×{size} image" if size else "one image") if s.get("space") == IMAGE.name else \
        f"one {lat['seq_len']}-token {'forward' if rep.get('kind') == 'classifier' else 'prefill'}"
    head = (f"Target **{rep['target']}**, budget **{budget:g} ms** for {unit} ({lat['format']} on {lat['runtime']}, "
            f"{lat['threads']} threads).")
    if s["table"] is None:  # given as it is (--student bilstm): nothing searched or predicted
        lines = ["## Student for the target", "",
                 f"{head} The student was given (`--student {c.get('student')}`, {s['params']:,} parameters, "
                 f"{c['precision']}), not searched: the latency model predicts students of the teacher's family only, "
                 f"so the budget is judged on the measured time.", "",
                 "| | latency (ms) | within budget |", "|---|---:|---|"]
    else:
        lines = ["## Student chosen for the target", "",
                 f"{head} The search weighed {s['candidates']} candidates ([table]({s['table']})) with the "
                 f"{'calibrated' if lat['calibrated'] else 'uncalibrated (datasheet priors)'} latency model and chose "
                 f"the largest that fits: {_choice_words(rep)}.{recipe_words(s)}{_memory_words(s)}", "",
                 "| | latency (ms) | within budget |", "|---|---:|---|",
                 f"| predicted on {rep['target']} | {lat['predicted_ms']:.3f} | "
                 f"{'yes' if lat['meets_budget_predicted'] else 'NO'} |"]
    for m in lat["measured"]:
        same = m["format"] == lat["format"] and measured_precision(m) == lat["precision"]
        where = f"measured on {m['device']}" + (" (the target)" if m.get("on_target") else "")
        mark = ("yes" if m["p50_ms"] <= budget else "NO") if m.get("on_target") else "(not the target)"
        lines.append(f"| {where}: {m['format']} {measured_precision(m)}"
                     f"{' (deployed)' if same else ''}, p50 / p90 | {m['p50_ms']:.3f} / {m['p90_ms']:.3f} | {mark} |")
    lines.append("")
    lines += _graph_parity_lines(lat["measured"])
    cal = rep.get("calibration")
    if cal:
        lines += [f"Latency model: {cal['source']} calibration" + (f" (`{cal['path']}`)" if cal.get("path") else "")
                  + ".", ""]
    if lat.get("device_error"):
        lines += [f"The device could not be measured: {lat['device_error']}", ""]
    if lat.get("device_note"):
        lines += [f"On the device: {lat['device_note']}.", ""]
    if lat.get("meets_budget_measured") is False:
        lines += [f"**The deployed file misses the budget on the device** ({lat['measured_on_target_ms']:.3f} ms)"
                  + (f": {lat['shrink_stopped']}" if lat.get("shrink_stopped") else
                     f" after {len(s['attempts']) - 1} recalibrate-and-shrink round(s)") + ".", ""]
    if len(s["attempts"]) > 1:
        lines += ["Measured misses on the device recalibrated the latency model and shrank the student:", "",
                  "| attempt | params | predicted (ms) | measured (ms) |", "|---:|---:|---:|---:|"]
        for a in s["attempts"]:
            m = "—" if a["measured_ms"] is None else f"{a['measured_ms']:.3f}"
            lines.append(f"| {a['attempt']} | {a['params']:,} | {a['predicted_ms']:.3f} | {m} |")
        lines += ["", "Earlier attempts are kept in attempts/N/.", ""]
    return _section_tail(rep, lines, "latency")


def _device_machine(q: dict) -> str:
    """A device parity row's machine cell: uname -m, whether emulated, an arm64 device's features."""
    features = f": {' '.join(q['cpu_features'])}" if q.get("cpu_features") else ""
    return f"{q.get('machine')}{' (emulated)' if q.get('emulated') else ''}{features}"


def _graph_parity_lines(measured: list) -> list[str]:
    """report.md's table of the files' parity on the devices they were timed on (the bar they passed here)."""
    checked = [m for m in measured if (m.get("parity") or {}).get("checked")]
    lines = []
    if checked:
        lines += ["Parity on the device (the file's parity rows there against PyTorch's logits, by the bar it passed "
                  "here):", "", "| device | machine: arm64 features | export | rows | top-1 agreement | max abs diff | "
                  "passed |", "|---|---|---|---:|---:|---:|---|"]
        for m in checked:
            q = m["parity"]
            lines.append(f"| {m['device']} | {_device_machine(q)} | "
                         f"{m['format']} {measured_precision(m)} | {q['rows']} | {q['top1_agreement']:.3f} | "
                         f"{_cell(q.get('max_abs_diff'), '.3g')} | {'yes' if q['passed'] else 'NO'} |")
        lines.append("")
    unchecked = [f"Not checked on {m['device']}: {m['parity']['why']}" for m in measured
                 if (m.get("parity") or {}).get("checked") is False]
    return lines + unchecked + ([""] if unchecked else [])


def _held_back(res) -> Optional[dict]:
    """report.json search.held_back_by_memory: the largest student the budget allowed that this machine could not
    train beside the teacher (SearchResult.held_back), {params, student}; None where memory held nothing back."""
    row = res.held_back
    return None if row is None else {"params": row["params"], "student": SPACES[res.space].describe(row)}


def _memory_words(s: dict) -> str:
    """The sentence saying the machine's memory, not the budget, bounded the choice; empty where it did not."""
    h = s.get("held_back_by_memory")
    return "" if not h else (f" The budget allowed larger students (up to {h['student']}), but this machine's free "
                             f"memory cannot train them beside the teacher (`train_memory` in the table): on a "
                             f"machine with more memory the job would choose a larger one.")


def _choice_words(rep: dict) -> str:
    s = rep["search"]
    c = s["choice"]
    return f"{SPACES[s.get('space') or TRANSFORMER.name].shape(c)}, {c['precision']} ({s['params']:,} parameters)"


def recipe_words(search: dict) -> str:
    """The sentence saying which weight recipe the chosen student's quantised file gets and why (report.json
    search.quant_recipe), with a leading space; empty where there is none (float32, ONNX/TFLite)."""
    r = search.get("quant_recipe")
    if not r:
        return ""
    return (f" Its {r['quantize']} {r['format']} file gets `{r['recipe']}`, "
            f"{'blockwise' if r['blockwise'] else 'not blockwise'} ({r['grain']}): {r['why']}.")


def _cell(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def render_generation_section(rep: dict) -> str:
    """report.md's part for a generative job: the budget, predicted and measured generation side by side."""
    g, s = rep["generation"], rep["search"]
    b, p = g["budget"], g["predicted"]
    ok = lambda v: "—" if v is None else ("yes" if v else "NO")  # noqa: E731
    lines = ["## Student chosen for the target", "",
             f"Target **{rep['target']}**, generation budget **{generation_budget_words(b)}** tokens ({g['format']} "
             f"export on the {g['runtime']} runtime, {g['threads']} threads). The search weighed {s['candidates']} candidates "
             f"([table]({s['table']})) with the {'calibrated' if g['calibrated'] else 'uncalibrated (datasheet priors)'}"
             f" generation model and chose the largest that fits: {_choice_words(rep)}.{recipe_words(s)}"
             f"{_memory_words(s)}", "",
             "| | export | decode (tok/s) | TTFT (ms) | prefill (tok/s) | peak RSS (MB) | size (MB) | within budget |",
             "|---|---|---:|---:|---:|---:|---:|---|",
             f"| predicted on {rep['target']} | {g['format']} {g['precision']} | {p['decode_tok_s']:.1f} | "
             f"{p['ttft_ms']:.2f} | {p['prefill_tok_s']:.0f} | {p['peak_rss_mb']:.1f} | {p['size_mb']:.2f} | "
             f"{ok(g['meets_budget_predicted'])} |"]
    for m in g["measured"]:
        deployed = m["format"] == g["format"] and measured_precision(m) == g["precision"]
        where = f"measured on {m['device']}" + (" (the target)" if m.get("on_target") else "") + \
            (f" ({m.get('machine')}, EMULATED)" if m.get("emulated") else "")
        mark = ok(_meets(m, b)) if m.get("on_target") else ("(emulated: times not judged)" if m.get("emulated")
                                                            else "(not the target)")
        lines.append(f"| {where} | {m['format']} {measured_precision(m)}{' (deployed)' if deployed else ''} | "
                     f"{m['decode_tok_s']:.1f} | {m['ttft_ms']:.2f} | {_cell(m.get('prefill_tok_s'), '.0f')} | "
                     f"{_cell(m.get('peak_rss_mb'), '.1f')} | {_cell(m.get('size_mb'), '.2f')} | {mark} |")
    lines += ["", "![generation: predicted and measured](plots/generation.png)", "",
              f"Medians over the runs; prompt {b['prompt_len']} tokens, {b['decode_len']} generated.", ""]
    for device, c in (g.get("runtime_choice") or {}).items():
        lines += [f"Runtime to ship on {device}: **{c['ship'] or 'undecided'}**: {c['why']}.", ""]
    checked = [m for m in g["measured"] if (m.get("parity") or {}).get("checked")]
    if checked:
        lines += ["Generation parity on the device beside the check here (each file's greedy tokens against PyTorch's, "
                  "the same bar in both places):", "", "| device | machine: arm64 features | export | prompts matched "
                  "there | matched here | first divergences there (token of each diverging prompt) | same tokens "
                  "there as here | passed there |", "|---|---|---|---:|---:|---|---:|---|"]
        for m in checked:
            q = m["parity"]
            here = q.get("here_machine") or "here"
            diverged = ", ".join(f"prompt {i + 1} at {t}" for i, t in enumerate(q["first_divergence"]) if t is not None)
            lines.append(f"| {m['device']} | {_device_machine(q)} | {m['format']} {measured_precision(m)} | "
                         f"{q['prompts_matched']}/{q['prompts']} | "
                         f"{_cell(q.get('here_prompts_matched'), 'd')}/{q['prompts']} on {here} | {diverged or 'none'} | "
                         f"{_cell(q.get('same_tokens_as_here'), 'd')} | {'yes' if q['passed'] else 'NO'} |")
        lines.append("")
    lines += [f"Not checked on {m['device']}: {m['parity']['why']}" for m in g["measured"]
              if (m.get("parity") or {}).get("checked") is False] + \
        ([""] if any((m.get("parity") or {}).get("checked") is False for m in g["measured"]) else [])
    cal = rep.get("calibration")
    if cal:
        lines += [f"Generation model: {cal['source']} calibration" + (f" (`{cal['path']}`)" if cal.get("path") else "")
                  + ".", ""]
    lat = rep["latency"]
    if lat.get("device_error"):
        lines += [f"The device could not be measured: {lat['device_error']}", ""]
    if lat.get("device_note"):
        lines += [f"On the device: {lat['device_note']}.", ""]
    if g["meets_budget_measured"] is False:
        lines += [f"**The deployed export misses the generation budget on the device** "
                  f"({_gen_words(g['measured_on_target'])})" + (f": {lat['shrink_stopped']}" if lat.get("shrink_stopped")
                                                               else "") + ".", ""]
    if len(s["attempts"]) > 1:
        lines += ["Measured misses on the device recalibrated the generation model and shrank the student:", "",
                  "| attempt | params | predicted decode (tok/s) | measured decode (tok/s) | measured TTFT (ms) |",
                  "|---:|---:|---:|---:|---:|"]
        for a in s["attempts"]:
            m = a.get("measured") or {}
            lines.append(f"| {a['attempt']} | {a['params']:,} | {a['predicted']['decode_tok_s']:.1f} | "
                         f"{_cell(m.get('decode_tok_s'), '.1f')} | {_cell(m.get('ttft_ms'), '.2f')} |")
        lines += ["", "Earlier attempts are kept in attempts/N/.", ""]
    return _section_tail(rep, lines, "decode tokens/s")


def _section_tail(rep: dict, lines: list[str], searched_on: str) -> str:
    """What both jobs' sections end with: the exports, the search plot, the phase timings."""
    plot = [] if rep["search"]["plot"] is None else [
        "![student search](" + rep["search"]["plot"] + ")", "",
        f"Predicted {searched_on} against parameters for every candidate; the dashed line is the budget, the star "
        "the choice.", ""]
    return "\n".join(lines + _exports_lines(rep) + plot + _timings_lines(rep))


def _exports_lines(rep: dict) -> list[str]:
    ex = rep.get("exports", {})
    bad = [k for k, e in ex.items() if not e.get("passed")]
    lines = [f"Exports: {len(ex) - len(bad)} of {len(ex)} pass parity against PyTorch"
             + (f"; failed: {', '.join(bad)}" if bad else "") + ".", ""]
    gen = [(k, e) for k, e in ex.items() if e.get("format") in ("litert-lm", "onnx-genai")]
    if gen:
        lines += ["Generation parity on held-out prompts (greedy continuation against PyTorch's `generate`; quantised "
                  "exports also perplexity and teacher-forced top-1 against PyTorch float):", "",
                  "| export | recipe | prompts matched fully | mean first divergence (token) | perplexity ratio | "
                  "top-1 agreement (decisive positions) | size (MB) | passed |", "|---|---|---:|---:|---:|---:|---:|---|"]
        for k, e in gen:
            lines.append(f"| [{k}]({e['path']}) | {e.get('recipe', e['quantize'])} | "
                         f"{_cell(e.get('tokens_match_share'), '.2f')} | {_cell(e.get('mean_first_divergence'), '.1f')} | "
                         f"{_cell(e.get('ppl_ratio'), '.3f')} | {_cell(e.get('top1_agreement_decisive'), '.3f')} | "
                         f"{_cell(e.get('size_mb'), '.2f')} | {'yes' if e.get('passed') else 'NO: ' + e.get('error', '')} |")
        lines.append("")
    return lines


def _timings_lines(rep: dict) -> list[str]:
    job = rep.get("timings_s", {}).get("job")
    if not job:
        return []
    lines = ["| phase | wall (s) | CPU (s) |", "|---|---:|---:|"]
    for name, p in job.items():
        if isinstance(p, dict):
            lines.append(f"| {name} | {p['wall_s']:.1f} | {p['cpu_s']:.1f} |")
    lines.append("")
    if job.get("invocations", 1) > 1:
        lines += [f"The job ran in {job['invocations']} invocations (--resume); the times are their sums.", ""]
    return lines


def plot_generation(rep: dict, path: Path) -> None:
    """Decode tokens/s and TTFT: predicted for the chosen student beside every measurement, budget lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekd.io import atomic_path

    g = rep["generation"]
    rows = [(f"predicted\n{g['format']} {g['precision']}", g["predicted"], "tab:gray")] + [
        (f"{m['device']}\n{m['format']} {measured_precision(m)}", m, "tab:red" if m.get("on_target") else "tab:blue")
        for m in g["measured"]]
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 1.4 * len(rows) + 3), 4.2))
    for ax, key, unit, budget in ((axes[0], "decode_tok_s", "decode (tokens/s)", g["budget"].get("decode_tok_s")),
                                  (axes[1], "ttft_ms", "time to first token (ms)", g["budget"].get("ttft_ms"))):
        ax.bar(range(len(rows)), [r[1][key] for r in rows], color=[r[2] for r in rows])
        ax.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=7, rotation=30, ha="right")
        if budget is not None:
            ax.axhline(budget, color="red", ls="--", lw=1, label=f"budget {budget:g}")
            ax.legend(fontsize=8)
        ax.set_ylabel(unit)
    fig.suptitle(f"generation on {rep['target']}: prompt {g['budget']['prompt_len']}, decode {g['budget']['decode_len']} "
                 f"(red: on the target)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
