"""Measure exported models where they will run: locally, on a board over ssh, on a phone over adb.

`runner_for(device)` is the one place a device string becomes a runner (profile/runners.py); `profile_model`
times a graph file (.onnx, .tflite) and `profile_generation` a generative export on it.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.profile.common import STAT_KEYS, Runner, check_model_file, input_shape_args
from edgekd.profile.generation_profile import GEN_KEYS, profile_generation
from edgekd.profile.runners import RUNNERS, runner_for
from edgekd.settings import Settings

__all__ = ["check_device", "profile_model", "profile_generation", "runner_for", "target_defaults", "Runner",
           "RUNNERS", "STAT_KEYS", "GEN_KEYS"]


def profile_model(model_file: str | Path, device: str | Runner = "local", runs: int = 50, warmup: int = 5,
                  threads: int | None = None, *, seq_len: int | None = None, remote_python: str = "python3",
                  identity_file: str | None = None, known_hosts: str | None = None,
                  insecure_host_key: bool = False, connect_timeout: int = 10,
                  benchmark_binary: str | None = None, timeout: float = 1800.0,
                  settings: Settings | None = None, parity: bool | None = None) -> dict:
    """Time `model_file` on `device` ("local", "ssh://USER@HOST[:PORT]", "adb[:SERIAL]", or its runner from
    `runner_for`/`check_device`, whose options then stand).

    Returns DESIGN.md's keys (device, format, runs, threads, mean/p50/p90/p99/std/min/max_ms, init_ms,
    peak_rss_mb, size_mb, ops) plus runtime details. Token inputs use the seq_len and vocabulary from
    the export's parity record when there is one. `parity`: the file's parity rows run there against PyTorch's
    logits by the bar it passed when exported (its check set, FILE.parity.npz; graph_runtime.parity_run), by
    default on every device but this machine (where the export's own check ran); {"checked": false, "why"}
    where it could not be.
    """
    from edgekd.checks import number, optional_number

    number("--runs", runs, low=1, integer=True)
    number("--warmup", warmup, low=0, integer=True)
    optional_number("--threads", threads, low=1, integer=True)
    optional_number("--seq-len", seq_len, low=1, integer=True)
    runner = runner_for(device, settings, remote_python=remote_python, identity_file=identity_file,
                        known_hosts=known_hosts, insecure_host_key=insecure_host_key, connect_timeout=connect_timeout,
                        benchmark_binary=benchmark_binary)
    runner.check_threads(threads)
    path = check_model_file(model_file)
    length, vocab = input_shape_args(path, seq_len)
    check, why = None, None
    if parity if parity is not None else runner.scheme != "local":
        check, why = _check_set(path, runner)
    stats = runner.profile(path, runs, warmup, threads, length, vocab, timeout, parity=check)
    if stats.get("size_mb") is None:
        stats["size_mb"] = path.stat().st_size / 1e6
    stats["model"] = str(path)
    run = stats.pop("parity_run", None)
    if run is not None:
        stats["parity"] = run | {"machine": stats.get("machine"), "emulated": bool(stats.get("emulated")),
                                 "emulated_by": stats.get("emulated_by"), "cpu_features": stats.get("cpu_features"),
                                 "runtime": stats.get("runtime")}
        if not run["passed"]:
            stats["parity"]["error"] = _device_failure(path.name, runner.describe(), stats["parity"])
    elif check is not None or why is not None:
        stats["parity"] = {"checked": False, "why": why or "the device's timer ran no parity rows"}
    return {k: stats.get(k) for k in STAT_KEYS} | {k: v for k, v in stats.items() if k not in STAT_KEYS}


def _check_set(path: Path, runner: Runner) -> tuple[Path | None, str | None]:
    """The export's parity check set for the device, or why there is none."""
    from edgekd.export.graph_runtime import CHECK_SUFFIX

    if runner.no_graph_parity:
        return None, runner.no_graph_parity
    check = path.with_name(path.name + CHECK_SUFFIX)
    if not check.is_file():
        return None, (f"no parity check set beside the file ({check.name}): export it with edgekd export to check it "
                      f"on the device")
    return check, None


def _device_failure(name: str, device: str, rec: dict) -> str:
    """The one line of a graph file that fails parity on a device."""
    where = f"{device} ({rec.get('machine')}{', emulated' if rec.get('emulated') else ''})"
    t = rec.get("threshold") or {}
    if rec.get("problem"):
        return f"{name} failed parity on {where}: {rec['problem']}"
    if "max_abs_diff" in t:
        return (f"{name} failed parity on {where}: max abs diff {rec['max_abs_diff']:.4g} > {t['max_abs_diff']:.4g}"
                + (f" or a label differs from PyTorch's (top-1 agreement {rec['top1_agreement']:.3f})"
                   if "top1_agreement" in t else ""))
    key = "top1_agreement_decisive" if "top1_agreement_decisive" in t else "top1_agreement"
    return f"{name} failed parity on {where}: {key.replace('_', ' ')} {rec.get(key)} < {t.get(key)}"


def check_device(device: str, *, probe: bool = True, settings: Settings | None = None, **options) -> Runner:
    """A --device edgekd can use: well formed and (`probe`) answering now (ssh: `true` over BatchMode with a
    short connect timeout; adb: `adb get-state`), so a typo or a switched-off board is one line before any work.
    `options`: the runner's (identity_file, known_hosts, ..., benchmark_binary). Returns the runner."""
    runner = runner_for(device, settings, **options)
    if probe:
        runner.check()
    return runner


def target_defaults(target: str | None, device: str | None, threads: int | None,
                    settings: Settings | None = None) -> tuple[str, int | None]:
    """A target file supplies the device kind and thread count the user did not give (the host's
    measured thread count is not measured for this: all allowed cores, as without --threads)."""
    if target is None:
        return device or "local", threads
    from edgekd.targets import load_target

    t = load_target(target, settings)
    method = t.access.get("method", "local")
    if device is None:
        if method == "ssh":
            raise EdgekdError(f"target {t.name} is reached over ssh: give --device ssh://USER@HOST[:PORT]")
        device = "adb" if method == "adb" else "local"
    return device, threads or t.runtime.get("default_threads")
