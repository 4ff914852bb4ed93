#!/usr/bin/env python3
"""Times one exported model with the runtime found where it runs and prints one JSON object.

Self-contained on purpose: the ssh runner copies this single file to a board, where only python3,
numpy and onnxruntime or ai_edge_litert / tflite_runtime can be assumed. The local runner and the
parity check import the same code, so what is measured on a board is what was checked here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

EXIT_NO_RUNTIME = 3
EXIT_BAD_MODEL = 4


class RunnerError(Exception):
    """A problem the caller turns into one line: `kind` is "no-runtime", "bad-model" or "bad-args"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def detect_format(path: str) -> str:
    """TFLite flatbuffers carry "TFL3" at byte 4; anything else must be named .onnx to be tried."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise RunnerError("bad-model", f"cannot read model file {path}: {e.strerror}") from e
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if path.endswith(".onnx"):
        return "onnx"
    if path.endswith(".tflite"):
        raise RunnerError("bad-model", f"{path} is not a TFLite flatbuffer (no TFL3 identifier)")
    raise RunnerError("bad-model", f"{path}: unknown model format (expected .onnx or .tflite)")


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


def _np():
    try:
        import numpy as np
    except ImportError as e:
        raise RunnerError("no-runtime", "python3 on the device has no numpy: pip install numpy") from e
    return np


class _OnnxModel:
    format = "onnx"

    def __init__(self, path: str, threads: int | None, profile_prefix: str | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RunnerError("no-runtime", "python3 on the device has no onnxruntime: pip install onnxruntime") from e
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        try:
            self.sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise RunnerError("bad-model", f"onnxruntime cannot load {path}: {_first_line(e)}") from e
        self.runtime = f"onnxruntime {ort.__version__}"
        np = _np()
        types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
                 "tensor(bool)": np.bool_, "tensor(float16)": np.float16}
        self.inputs = [(i.name, list(i.shape), types.get(i.type, np.float32)) for i in self.sess.get_inputs()]

    def run(self, feeds: dict) -> list:
        return self.sess.run(None, feeds)


class _TfliteModel:
    format = "tflite"

    def __init__(self, path: str, threads: int | None):
        Interpreter, self.runtime = _tflite_interpreter()
        try:
            self.it = Interpreter(model_path=path, num_threads=threads)
            self.it.allocate_tensors()
        except Exception as e:
            raise RunnerError("bad-model", f"LiteRT cannot load {path}: {_first_line(e)}") from e
        self.in_details = self.it.get_input_details()
        self.out_details = self.it.get_output_details()
        self.inputs = [(d["name"], [int(x) for x in d["shape"]], d["dtype"]) for d in self.in_details]

    def run(self, feeds: dict) -> list:
        np = _np()
        for d in self.in_details:
            self.it.set_tensor(d["index"], feeds[d["name"]])
        self.it.invoke()
        outs = []
        for d in self.out_details:
            y = self.it.get_tensor(d["index"])
            scale, zero = d.get("quantization", (0.0, 0))
            if scale and y.dtype != np.float32:  # full-int8 models hand back quantised logits
                y = (y.astype(np.float32) - zero) * scale
            outs.append(y)
        return outs


def _tflite_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter
        import ai_edge_litert

        return Interpreter, f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '')}".strip()
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        import tflite_runtime

        return Interpreter, f"tflite_runtime {getattr(tflite_runtime, '__version__', '')}".strip()
    except ImportError as e:
        raise RunnerError("no-runtime", "python3 on the device has neither ai_edge_litert nor tflite_runtime: "
                          "pip install ai-edge-litert") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def load(path: str, threads: int | None = None, profile_prefix: str | None = None):
    """Open `path` with the runtime its format needs; a broken file is a RunnerError("bad-model")."""
    fmt = detect_format(path)
    if fmt == "onnx":
        return _OnnxModel(path, threads, profile_prefix)
    return _TfliteModel(path, threads)


def make_feeds(model, seq_len: int, vocab: int | None, seed: int = 0) -> dict:
    """Random token ids (or floats) shaped like the model's inputs, an attention mask all ones; dynamic axes get
    batch 1, seq_len."""
    np = _np()
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape, dtype in model.inputs:
        dims = [d if isinstance(d, int) and d > 0 else (1 if i == 0 else seq_len) for i, d in enumerate(shape)]
        if np.issubdtype(dtype, np.integer) and "mask" in name:  # a classifier's attention_mask: every token real
            feeds[name] = np.ones(dims, dtype=dtype)
        elif np.issubdtype(dtype, np.integer):
            feeds[name] = rng.integers(0, max(1, vocab or 2), size=dims).astype(dtype)
        else:
            feeds[name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def summarize(times_ms: list[float]) -> dict:
    np = _np()
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
            vocab: int | None = None, pin: bool = True, op_profile: bool = True) -> dict:
    """Warmup then timed runs on cores pinned to the fastest ones; init, RSS and per-op rows too."""
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
    model = load(path, threads)
    init_ms = (time.perf_counter() - t0) * 1000.0
    feeds = make_feeds(model, seq_len, vocab)
    first = next(iter(feeds.values()), None)
    seq_len = int(first.shape[-1]) if first is not None and first.ndim == 2 else seq_len
    try:
        model.run(feeds)
    except Exception as e:
        raise RunnerError("bad-model", f"{path} loads but fails to run: {_first_line(e)}") from e
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
             "init_ms": init_ms, "peak_rss_mb": _peak_rss_mb(),
             "size_mb": size_mb(path), "ops": ops,
             "inputs": {k: list(v.shape) for k, v in feeds.items()}}
    return stats


def _onnx_ops(path: str, threads: int, feeds: dict, runs: int) -> list[dict]:
    """A second session with profiling on, so its overhead stays out of the timed runs."""
    with tempfile.TemporaryDirectory() as d:
        m = _OnnxModel(path, threads, profile_prefix=os.path.join(d, "ort"))
        m.run(feeds)
        for _ in range(runs):
            m.run(feeds)
        trace = m.sess.end_profiling()
        rows = onnx_op_rows(trace)
    return rows


def size_mb(path: str) -> float:
    """An exported model's size on disk: the file, or every file of a folder (an onnxruntime-genai model)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 1e6
    return os.path.getsize(path) / 1e6


def _peak_rss_mb() -> float:
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
    a = ap.parse_args(argv)
    try:
        stats = profile(a.model, a.runs, a.warmup, a.threads, a.seq_len, a.vocab,
                        pin=not a.no_pin, op_profile=not a.no_op_profile)
    except RunnerError as e:
        print(json.dumps({"error": str(e), "kind": e.kind}))
        return EXIT_NO_RUNTIME if e.kind == "no-runtime" else EXIT_BAD_MODEL
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
