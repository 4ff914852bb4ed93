"""report.md's part for the one-command job: the student chosen for the target, latency predicted
against measured, exports, the search plot and the phase timings."""

from __future__ import annotations


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
        same = m["format"] == lat["format"] and (m.get("quantize", "none") != "none") == (lat["precision"] == "int8")
        where = f"measured on {m['device']}" + (" (the target)" if m.get("on_target") else "")
        mark = ("yes" if m["p50_ms"] <= budget else "NO") if m.get("on_target") else "(not the target)"
        lines.append(f"| {where}: {m['format']} {'int8' if m.get('quantize', 'none') != 'none' else 'float32'}"
                     f"{' (deployed)' if same else ''}, p50 / p90 | {m['p50_ms']:.3f} / {m['p90_ms']:.3f} | {mark} |")
    lines.append("")
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
