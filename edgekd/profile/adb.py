"""Profiles a .tflite on an Android phone with TFLite's benchmark_model, pinned to the big cores, via adb."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.profile.common import run_child
from edgekd.export.runtime import pick_big_cores

REMOTE_ROOT = "/data/local/tmp/edgekd"
DEVICE_BENCHMARK = "/data/local/tmp/benchmark_model"
INSTALL_HINT = ("install Android platform-tools (https://developer.android.com/tools/releases/platform-tools, "
                "or apt-get install adb) and put adb on PATH")
FREQ_SCRIPT = ('for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; '
               'do echo "$f $(cat $f)"; done')


def parse_adb_device(device: str) -> str | None:
    """"adb" -> None (the only device), "adb:SERIAL" -> SERIAL."""
    if device == "adb":
        return None
    if device.startswith("adb:") and len(device) > 4:
        return device[4:]
    raise EdgekdError(f"bad device {device!r}: write adb or adb:SERIAL")


def adb_base(serial: str | None) -> list[str]:
    return ["adb", *(["-s", serial] if serial else [])]


def parse_cpu_freqs(text: str) -> dict[int, int]:
    freqs = {}
    for m in re.finditer(r"/cpu(\d+)/cpufreq/cpuinfo_max_freq\s+(\d+)", text):
        freqs[int(m.group(1))] = int(m.group(2))
    return freqs


def cpu_mask(cores: list[int]) -> str:
    return format(sum(1 << c for c in cores), "x")


def default_threads(freqs: dict[int, int]) -> int:
    """Every core faster than the little cluster (prime + performance cores); all cores if uniform."""
    if not freqs:
        return 4
    little = min(freqs.values())
    return sum(1 for f in freqs.values() if f > little) or len(freqs)


def benchmark_args(binary: str, graph: str, threads: int, runs: int, warmup: int) -> list[str]:
    return [binary, f"--graph={graph}", f"--num_threads={threads}", f"--num_runs={runs}",
            f"--warmup_runs={warmup}", "--enable_op_profiling=true"]


def build_commands(model_file: str, serial: str | None, mask: str, threads: int, runs: int, warmup: int,
                   benchmark_binary: str | None = None, remote_root: str = REMOTE_ROOT) -> dict[str, list]:
    """The adb argv lists in order; anything run by the device shell is one string, every path quoted."""
    base = adb_base(serial)
    q = shlex.quote
    remote_model = f"{remote_root}/{Path(model_file).name}"
    binary = f"{remote_root}/benchmark_model" if benchmark_binary else DEVICE_BENCHMARK
    bench = " ".join(q(a) for a in benchmark_args(binary, remote_model, threads, runs, warmup))
    cmds = {"mkdir": [*base, "shell", f"mkdir -p {q(remote_root)}"],
            "push_model": [*base, "push", str(model_file), remote_model]}
    if benchmark_binary:
        cmds["push_binary"] = [*base, "push", str(benchmark_binary), binary]
        cmds["chmod"] = [*base, "shell", f"chmod 755 {q(binary)}"]
    else:
        cmds["check_binary"] = [*base, "shell", f"test -x {q(binary)} && echo present || echo missing"]
    cmds["run"] = [*base, "shell", f"taskset {mask} {bench}"]
    cmds["cleanup"] = [*base, "shell", f"rm -rf {q(remote_root)}"]
    return cmds


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


def _adb(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        proc = run_child(cmd, timeout, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise EdgekdError(f"adb did not answer within {timeout:.0f}s ({' '.join(cmd[:4])}...): check the phone") from e
    if proc.returncode != 0:
        err = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        if "no devices" in err or "not found" in err or "offline" in err or "unauthorized" in err:
            raise EdgekdError(f"adb: {err}: connect the phone, enable USB debugging and accept the key")
        raise EdgekdError(f"adb command failed ({' '.join(cmd[1:4])}...): {err}")
    return proc


def probe_adb(serial: str | None) -> None:
    """`adb get-state`: the phone is connected, authorised and online now, not after minutes of work."""
    if shutil.which("adb") is None:
        raise EdgekdError(f"adb not found on PATH: {INSTALL_HINT}")
    state = _adb([*adb_base(serial), "get-state"], 15).stdout.strip()
    if state != "device":
        raise EdgekdError(f"adb{':' + serial if serial else ''}: the phone is {state or 'not ready'}: connect it, "
                          f"enable USB debugging and accept the key")


def profile_adb(model_file: Path, serial: str | None, runs: int, warmup: int, threads: int | None,
                benchmark_binary: str | None = None, timeout: float = 1800.0) -> dict:
    if model_file.suffix != ".tflite":
        raise EdgekdError(f"the adb runner profiles .tflite files with benchmark_model; export {model_file.name} "
                          f"with --format tflite")
    if shutil.which("adb") is None:
        raise EdgekdError(f"adb not found on PATH: {INSTALL_HINT}")
    if benchmark_binary and not Path(benchmark_binary).is_file():
        raise EdgekdError(f"benchmark_model binary {benchmark_binary} does not exist: download TFLite's "
                          f"android_aarch64_benchmark_model and pass its path")
    label = f"adb:{serial}" if serial else "adb"
    freqs = parse_cpu_freqs(_adb([*adb_base(serial), "shell", FREQ_SCRIPT], 30).stdout)
    if threads is not None and freqs:
        from edgekd.checks import thread_count

        thread_count("--threads", threads, len(freqs), where=label)
    n = threads or default_threads(freqs)
    cores = pick_big_cores(freqs, n) if freqs else list(range(n))
    cmds = build_commands(str(model_file), serial, cpu_mask(cores), n, runs, warmup, benchmark_binary)
    try:
        for key in ("mkdir", "push_model", "push_binary", "chmod", "check_binary"):
            if key in cmds:
                proc = _adb(cmds[key], timeout)
                if key == "check_binary" and "present" not in proc.stdout:
                    raise EdgekdError(f"{label}: no benchmark_model at {DEVICE_BENCHMARK}: pass --benchmark-binary "
                                      f"PATH to TFLite's android_aarch64_benchmark_model")
        stats = parse_benchmark_output(_adb(cmds["run"], timeout).stdout)
    finally:
        try:
            _adb(cmds["cleanup"], 60)
        except EdgekdError:
            pass
    stats.update({"device": label, "cores": cores, "threads": stats.get("threads") or n})
    return stats
