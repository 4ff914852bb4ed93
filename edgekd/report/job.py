"""The one-command job's part of report.json (built here, from the job's facts), report.md's job
section, and the summary lines the job prints: report/ is the one place that shapes the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edgekd.console import echo
from edgekd.io import write_json, write_text
from edgekd.precision import precision_of


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
    extra: dict = field(default_factory=dict)


def _latency(f: JobFacts) -> dict:
    res, final = f.search, f.attempts[-1]
    budget, on_target = res.latency_budget_ms, final["measured_ms"]
    lat = {"predicted_ms": res.predicted_ms, "format": f.fmt, "runtime": f.runtime, "precision": res.precision,
           "seq_len": f.seq_len, "threads": f.threads, "calibrated": res.calibrated,
           "meets_budget_predicted": res.predicted_ms <= budget, "measured_on_target_ms": on_target,
           "meets_budget_measured": None if on_target is None else on_target <= budget, "measured": f.measured}
    if f.device_error:
        lat["device_error"] = f.device_error
    if f.shrink_stopped:
        lat["shrink_stopped"] = f.shrink_stopped
    return lat


def _problem(rep: dict, f: JobFacts) -> Optional[str]:
    """Why the job failed (a device error, failed parity, the budget missed on the device), or None."""
    failed = [f"{name}: {e.get('error', 'failed')}" for name, e in f.exports.items() if not e.get("passed")]
    lat = rep["latency"]
    if f.device_error:
        return f.device_error
    if failed:
        return f"export parity failed ({'; '.join(failed)})"
    if lat["meets_budget_measured"] is False:
        return (f"the device missed the budget: {lat['measured_on_target_ms']:.3f} ms measured > "
                f"{f.search.latency_budget_ms:g} ms after {len(f.attempts) - 1} recalibrate-and-shrink round(s)")
    return None


def build_job_report(engine: dict, f: JobFacts) -> dict:
    """report.json of the job: the engine's report (RunResult.report) with the job's keys filled in."""
    res, d = f.search, f.search_dir
    rep = dict(engine)
    rep["target"] = f.target
    rep["latency_budget_ms"] = res.latency_budget_ms
    rep["latency"] = _latency(f)
    rep["exports"] = f.exports
    rep["search"] = {"table": f"{d}/candidates.csv", "json": f"{d}/candidates.json", "plot": f"{d}/search.png",
                     "choice": res.choice, "predicted_ms": res.predicted_ms, "params": f.attempts[-1]["params"],
                     "calibrated": res.calibrated, "candidates": len(res.table), "attempts": f.attempts}
    rep["calibration"] = f.calibration
    rep["target_facts"] = f.target_facts
    rep["timings_s"] = {**rep.get("timings_s", {}), "job": f.timings}
    rep["student"] = {**rep["student"], "precision_deployed": res.precision}
    rep.update(f.extra)
    problem = _problem(rep, f)
    rep["status"] = "failed" if problem else "complete"
    rep.pop("error", None)
    if problem:
        rep["error"] = problem
    return rep


def failure_message(rep: dict, out: Path) -> Optional[str]:
    """The JobFailed line for a failed job's report, or None when it succeeded."""
    if rep.get("status") != "failed":
        return None
    where = "holds the local results" if rep["latency"].get("device_error") else "records the numbers"
    return f"{rep['error']}; the run {out} {where}"


def write_job_report(out: Path, rep: dict) -> None:
    """report.json and report.md of the finished job (plots are the engine's, already written)."""
    from edgekd.report.write import render_markdown

    write_json(out / "report.json", rep)
    write_text(out / "report.md", render_markdown(rep, rep.get("kind", "causal-lm")) + "\n")


def print_summary(out: Path, rep: dict) -> None:
    """The job's last lines on the console: the student against the budget, the losses, where it is."""
    lat, s, b = rep["latency"], rep["student"], rep["scratch"]
    line = (f"{rep['target']}: student {s['params']:,} params predicted {lat['predicted_ms']:.2f} ms "
            f"(budget {rep['latency_budget_ms']:g} ms)")
    if lat["measured_on_target_ms"] is not None:
        line += f", measured {lat['measured_on_target_ms']:.2f} ms on the device"
    echo(line)
    if "eval_loss" in s and "eval_loss" in b:
        echo(f"held-out loss: distilled {s['eval_loss']:.4f} vs scratch {b['eval_loss']:.4f}")
    echo(f"job written to {out} (report.md, report.json, student/, export/, profile/, search/)")


def render_target_section(rep: dict) -> str:
    """report.md's job part: the choice, latency predicted against measured, the search plot."""
    lat, s = rep["latency"], rep["search"]
    budget = rep["latency_budget_ms"]
    c = s["choice"]
    lines = ["## Student chosen for the target", "",
             f"Target **{rep['target']}**, budget **{budget:g} ms** for one {lat['seq_len']}-token prefill "
             f"({lat['format']} on {lat['runtime']}, {lat['threads']} threads). The search weighed "
             f"{s['candidates']} candidates ([table]({s['table']})) with the "
             f"{'calibrated' if lat['calibrated'] else 'uncalibrated (datasheet priors)'} latency model and chose the "
             f"largest that fits: {c['num_hidden_layers']} layers, hidden {c['hidden_size']}, "
             f"{c['num_attention_heads']} heads, FFN {c['intermediate_size']}, {c['precision']} "
             f"({s['params']:,} parameters).", "",
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
    cal = rep.get("calibration")
    if cal:
        lines += [f"Latency model: {cal['source']} calibration" + (f" (`{cal['path']}`)" if cal.get("path") else "")
                  + ".", ""]
    if lat.get("device_error"):
        lines += [f"The device could not be measured: {lat['device_error']}", ""]
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
    ex = rep.get("exports", {})
    bad = [k for k, e in ex.items() if not e.get("passed")]
    lines += [f"Exports: {len(ex) - len(bad)} of {len(ex)} pass parity against PyTorch"
              + (f"; failed: {', '.join(bad)}" if bad else "") + ".", ""]
    lines += ["![student search](" + s["plot"] + ")", "",
              "Predicted latency against parameters for every candidate; the dashed line is the budget, the star "
              "the choice.", ""]
    job = rep.get("timings_s", {}).get("job")
    if job:
        lines += ["| phase | wall (s) | CPU (s) |", "|---|---:|---:|"]
        for name, p in job.items():
            if not isinstance(p, dict):
                continue
            lines.append(f"| {name} | {p['wall_s']:.1f} | {p['cpu_s']:.1f} |")
        lines.append("")
        if job.get("invocations", 1) > 1:
            lines += [f"The job ran in {job['invocations']} invocations (--resume); the times are their sums.", ""]
    return "\n".join(lines)
