"""What the phone's benchmark binaries print, parsed: TFLite's benchmark_model (a graph file's run timings,
init, memory and per-op summary) and LiteRT-LM's litert_lm_main --benchmark (one generation's BenchmarkInfo)."""

from __future__ import annotations

import re

from edgekd.errors import EdgekdError

LITERT_LM_BINARY = "litert_lm_main"

_KV = re.compile(r"([A-Za-z0-9_]+)=([-+0-9.eE]+)")


def _kv(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in _KV.findall(line)}


def _split_row(line: str) -> list[str]:
    return [c for c in re.split(r"\t+|\s{2,}", line.strip()) if c]


def _node_type_summary(section: str) -> list[dict]:
    """Rows of the "Summary by node type" table: op, count, avg_ms, percent, times_called."""
    m = re.search(r"=+ Summary by node type =+\n(.*?)(?:\n\s*\n|\nTimings|\Z)", section, re.S)
    if not m:
        return []
    rows = []
    for line in m.group(1).splitlines():
        line = re.sub(r"^\s*INFO:\s*", "", line)
        cols = _split_row(line)
        if len(cols) < 4 or cols[0].startswith("["):
            continue
        try:
            rows.append({"op": cols[0], "count": int(cols[1]), "avg_ms": float(cols[2]),
                         "percent": float(cols[3].rstrip("%")),
                         "times_called": int(cols[6]) if len(cols) > 6 else None})
        except ValueError:
            continue
    return sorted(rows, key=lambda r: -r["avg_ms"])


def parse_benchmark_output(text: str) -> dict:
    """Statistics from benchmark_model's log: run timings, init, memory, threads, per-op summary.

    benchmark_model reports count/min/max/avg/std; percentiles appear only where the tool prints them
    (p50/median/p90/p99 keys) and are None otherwise rather than guessed.
    """
    text = text.replace("\r\n", "\n")
    out: dict = {"format": "tflite", "runtime": "benchmark_model"}
    head, _, ops_part = text.partition("Operator-wise Profiling Info for Regular Benchmark Runs")
    head = head.split("Profiling Info for Benchmark Initialization")[0]
    runs = [ln for ln in head.splitlines() if re.search(r"\bcount=\d+", ln) and "Timings (" not in ln]
    timing = _kv(runs[-1]) if runs else {}
    if not timing:
        m = re.search(r"Timings \(microseconds\):([^\n]*)", ops_part)
        timing = _kv(m.group(1)) if m else {}
    if not timing:
        raise EdgekdError("benchmark_model printed no timings: run it by hand with the same flags to see why")
    us = lambda k: timing[k] / 1000.0 if k in timing else None  # noqa: E731
    out.update({"runs": int(timing.get("count", 0)), "mean_ms": us("avg"), "std_ms": us("std"),
                "min_ms": us("min"), "max_ms": us("max"), "first_ms": us("first"),
                "p50_ms": us("p50") if "p50" in timing else us("median"), "p90_ms": us("p90"),
                "p99_ms": us("p99")})
    m = re.search(r"Inference timings in us:\s*Init:\s*([\d.]+),\s*First inference:\s*([\d.]+),"
                  r"\s*Warmup \(avg\):\s*([\d.]+),\s*Inference \(avg\):\s*([\d.]+)", text)
    if m:
        out["init_ms"] = float(m.group(1)) / 1000.0
        out["first_ms"] = float(m.group(2)) / 1000.0
        out["warmup_avg_ms"] = float(m.group(3)) / 1000.0
        out["mean_ms"] = out["mean_ms"] if out["mean_ms"] is not None else float(m.group(4)) / 1000.0
    else:
        m = re.search(r"Initialized session in ([\d.]+)ms", text)
        out["init_ms"] = float(m.group(1)) if m else None
    m = re.search(r"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\):"
                  r"\s*init=([\d.]+)\s+overall=([\d.]+)", text)
    out["peak_rss_mb"] = float(m.group(2)) if m else None
    out["init_rss_mb"] = float(m.group(1)) if m else None
    m = re.search(r"The input model file size \(MB\):\s*([\d.]+)", text)
    out["size_mb"] = float(m.group(1)) if m else None
    m = re.search(r"#threads used for CPU inference:\s*\[(\d+)\]", text) or re.search(r"Num threads:\s*\[(\d+)\]", text)
    out["threads"] = int(m.group(1)) if m else None
    out["ops"] = _node_type_summary(ops_part) if ops_part else []
    return out



# --- litert_lm_main --benchmark -------------------------------------------------------------------

_FLOAT = r"([-+0-9.eE]+)"


def _duration_ms(text: str) -> float:
    """absl::Duration as printed ("372.565677ms", "4.918169165s", "1m2.5s", "850us")."""
    units = {"h": 3.6e6, "m": 6e4, "s": 1e3, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
    parts = re.findall(r"([0-9.]+)(h|ms|us|ns|m|s)", text)
    if not parts:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(v) * units[u] for v, u in parts)


def parse_benchmark_info(text: str) -> dict:
    """One run's numbers from litert_lm_main's BenchmarkInfo block (runtime/engine/io_types.cc's format).

    The last block in the output is the binary's (a model's reply could contain the same words). A number
    the block does not print stays None rather than derived.
    """
    text = text.replace("\r\n", "\n")
    start = text.rfind("BenchmarkInfo:")
    if start < 0:
        raise EdgekdError(f"{LITERT_LM_BINARY} printed no BenchmarkInfo: run it by hand with --benchmark to see why")
    block = text[start:]
    one = lambda rx: (lambda m: float(m.group(1)) if m else None)(re.search(rx, block))  # noqa: E731
    out = {"ttft_ms": None, "prefill_tok_s": one(r"Prefill Speed:\s*" + _FLOAT),
           "decode_tok_s": one(r"Decode Speed:\s*" + _FLOAT), "init_ms": None}
    ttft = one(r"Time to first token:\s*" + _FLOAT + r"\s*s")
    out["ttft_ms"] = ttft * 1e3 if ttft is not None else None
    for key, what in (("prompt_tokens", "Prefill"), ("decode_tokens", "Decode")):
        m = re.search(what + r" Turn 1: Processed (\d+) tokens in (\S+) duration", block)
        out[key] = int(m.group(1)) if m else None
        out[f"{what.lower()}_ms"] = _duration_ms(m.group(2)) if m else None
    total = re.search(r"(?:- Init Total|Total init time):\s*" + _FLOAT + r"\s*ms", block)
    phases = [float(v) for v in re.findall(r"^\s*- [^:\n]+:\s*" + _FLOAT + r"\s*ms", block, re.M)]
    out["init_ms"] = float(total.group(1)) if total else (sum(phases) if phases else None)
    if out["ttft_ms"] is None and out["prefill_ms"] is not None and out["decode_ms"] and out["decode_tokens"]:
        out["ttft_ms"] = out["prefill_ms"] + out["decode_ms"] / out["decode_tokens"]  # BenchmarkInfo's own formula
    if out["prefill_tok_s"] is None or out["decode_tok_s"] is None:
        raise EdgekdError(f"{LITERT_LM_BINARY}'s BenchmarkInfo has no prefill or decode speed: is the binary too old?")
    m = re.search(r"[Pp]eak memory[^\n]*?" + _FLOAT + r"\s*(MB|MiB|GB|GiB)", text)
    out["peak_rss_mb"] = (float(m.group(1)) * (1024.0 if m.group(2).startswith("G") else 1.0)) if m else None
    return out
