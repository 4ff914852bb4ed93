#!/usr/bin/env python3
"""Times one exported model with the runtime found where it runs and prints one JSON object (the board timer).

Self-contained on purpose: the ssh runner copies this file and export/graph_runtime.py (which opens the
model) to a board, where only python3, numpy and onnxruntime or ai_edge_litert / tflite_runtime can be
assumed; the local runner runs the same file in a fresh process. Runs are pinned to the fastest cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isfile(os.path.join(_HERE, "graph_runtime.py")):  # on a board: shipped beside this file
    sys.path.insert(0, _HERE)
    import board_facts as bf  # noqa: E402
    import graph_runtime as gr  # noqa: E402
else:
    import edgekd.export.graph_runtime as gr  # noqa: E402
    import edgekd.profile.board_facts as bf  # noqa: E402

RunnerError = gr.RunnerError

def big_cores(n: int | None = None, sysfs: str = "/sys/devices/system/cpu") -> list[int]:
    """The n allowed cores with the highest max clock (big cores first on big.LITTLE SoCs)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    freqs = {}
    for cpu in allowed:
        try:
            with open(f"{sysfs}/cpu{cpu}/cpufreq/cpuinfo_max_freq") as f:
                freqs[cpu] = int(f.read().strip())
        except (OSError, ValueError):
            freqs[cpu] = 0
    return pick_big_cores(freqs, n)


def pick_big_cores(freqs: dict[int, int], n: int | None) -> list[int]:
    """Highest max frequency first, lower index breaking ties; n=None keeps all."""
    order = sorted(freqs, key=lambda c: (-freqs[c], c))
    n = len(order) if n is None else max(1, min(n, len(order)))
    return sorted(order[:n])


def summarize(times_ms: list[float]) -> dict:
    np = gr.numpy()
    a = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean_ms": float(a.mean()), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "std_ms": float(a.std()), "min_ms": float(a.min()), "max_ms": float(a.max())}


def onnx_op_rows(profile_path: str) -> list[dict]:
    """Per-op-type time per inference from onnxruntime's profiling trace, biggest first.

    The first model_run in the trace is a warmup (allocations, kernel selection) and is left out.
    """
    with open(profile_path) as f:
        events = json.load(f)
    model_runs = sorted((ev for ev in events if ev.get("name") == "model_run"), key=lambda ev: ev["ts"])
    cutoff = model_runs[0]["ts"] + model_runs[0]["dur"] if len(model_runs) > 1 else -1
    runs = max(1, len(model_runs) - 1) if len(model_runs) > 1 else max(1, len(model_runs))
    per_op: dict[str, dict] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        if ev.get("ts", 0) < cutoff:
            continue
        op = ev.get("args", {}).get("op_name", "?")
        row = per_op.setdefault(op, {"op": op, "nodes": set(), "total_us": 0.0})
        row["nodes"].add(ev["name"])
        row["total_us"] += float(ev.get("dur", 0))
    total = sum(r["total_us"] for r in per_op.values()) or 1.0
    rows = [{"op": r["op"], "count": len(r["nodes"]), "avg_ms": r["total_us"] / runs / 1000.0,
             "percent": 100.0 * r["total_us"] / total} for r in per_op.values()]
    return sorted(rows, key=lambda r: -r["avg_ms"])


def profile(path: str, runs: int = 50, warmup: int = 5, threads: int | None = None, seq_len: int = 64,
            vocab: int | None = None, pin: bool = True, op_profile: bool = True, parity: str | None = None) -> dict:
    """Warmup then timed runs on cores pinned to the fastest ones; init, RSS and per-op rows too; with `parity`
    (a check set, graph_runtime.CHECK_SUFFIX, relative to the model's folder unless absolute), the file's parity
    here against its PyTorch logits by the bar it passed where it was exported (`parity_run`)."""
    if runs < 1 or warmup < 0:
        raise RunnerError("bad-args", f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})")
    if seq_len < 1:
        raise RunnerError("bad-args", f"seq_len must be >= 1 (got {seq_len})")
    cores = big_cores(threads)
    allowed = len(big_cores())
    if threads is not None and not 1 <= threads <= allowed:
        raise RunnerError("bad-args", f"--threads must be in [1, {allowed}], got {threads}: the device has "
                                      f"{allowed} core{'s' if allowed != 1 else ''} available")
    if pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    threads = threads or len(cores)
    t0 = time.perf_counter()
    model = gr.load(path, threads)
    init_ms = (time.perf_counter() - t0) * 1000.0
    feeds = gr.make_feeds(model, seq_len, vocab)
    first = next(iter(feeds.values()), None)
    seq_len = int(first.shape[-1]) if first is not None and first.ndim == 2 else seq_len
    try:
        model.run(feeds)
    except Exception as e:
        raise RunnerError("bad-model", f"{path} loads but fails to run: {gr.first_line(e)}") from e
    for _ in range(warmup):
        model.run(feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model.run(feeds)
        times.append((time.perf_counter() - t) * 1000.0)
    ops: list[dict] = []
    if op_profile and model.format == "onnx":
        ops = _onnx_ops(path, threads, feeds, min(runs, 10))
    stats = {"format": model.format, "runtime": model.runtime, "runs": runs, "warmup": warmup,
             "threads": threads, "cores": cores, "seq_len": seq_len, **summarize(times),
             "init_ms": init_ms, "peak_rss_mb": peak_rss_mb(),
             "size_mb": gr.size_mb(path), "ops": ops,
             "inputs": {k: list(v.shape) for k, v in feeds.items()}}
    if parity:
        check = parity if os.path.isabs(parity) else os.path.join(os.path.dirname(os.path.abspath(path)), parity)
        stats["parity_run"] = gr.parity_run(model, check)  # after the timed runs: they time the file alone
    facts = bf.facts()  # where it ran: an emulated device's times mean nothing
    return stats | {"machine": facts["machine"], "emulated": facts["emulated"], "emulated_by": facts["emulated_by"],
                    "cpu_features": facts["cpu_features"]}


def _onnx_ops(path: str, threads: int, feeds: dict, runs: int) -> list[dict]:
    """A second session with profiling on, so its overhead stays out of the timed runs."""
    with tempfile.TemporaryDirectory() as d:
        m = gr.OnnxModel(path, threads, profile_prefix=os.path.join(d, "ort"))
        m.run(feeds)
        for _ in range(runs):
            m.run(feeds)
        trace = m.sess.end_profiling()
        rows = onnx_op_rows(trace)
    return rows


def peak_rss_mb() -> float:
    """This process's own high-water RSS.

    Linux carries ru_maxrss over execve from the process that forked us (a parent holding PyTorch
    and the model would be counted), so VmHWM of the post-exec address space is read first.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 / 1024.0 if sys.platform == "darwin" else rss / 1024.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--no-op-profile", action="store_true")
    ap.add_argument("--parity", default=None, help="a parity check set (FILE.parity.npz) to run the file's rows of")
    a = ap.parse_args(argv)
    return print_result(lambda: profile(a.model, a.runs, a.warmup, a.threads, a.seq_len, a.vocab,
                                        pin=not a.no_pin, op_profile=not a.no_op_profile, parity=a.parity))


def print_result(measure) -> int:
    """Print what `measure()` returns as one JSON object, or its RunnerError as {"error", "kind"}; the exit code
    (the timers' convention, which the runners read)."""
    try:
        stats = measure()
    except RunnerError as e:
        print(json.dumps({"error": str(e), "kind": e.kind}))
        return gr.EXIT_NO_RUNTIME if e.kind == "no-runtime" else gr.EXIT_BAD_MODEL
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
