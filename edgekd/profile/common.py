"""What every runner shares: the model's sidecar metadata and turning runner output into stats or one error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgekd.errors import EdgekdError

STAT_KEYS = ("device", "format", "runs", "threads", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "std_ms",
             "min_ms", "max_ms", "init_ms", "peak_rss_mb", "size_mb", "ops")


def check_model_file(model_file: str | Path) -> Path:
    path = Path(model_file)
    if not path.is_file():
        raise EdgekdError(f"model file {path} does not exist: give the path of an exported .onnx or .tflite "
                          f"(see `edgekd export`)")
    if path.suffix not in (".onnx", ".tflite"):
        raise EdgekdError(f"{path} is neither .onnx nor .tflite: profile an exported model file")
    return path


def sidecar(model_file: Path) -> dict:
    """The parity record `export` wrote beside the model, for its seq_len and vocabulary; {} if absent."""
    side = model_file.with_name(model_file.name + ".json")
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        return {}


def input_shape_args(model_file: Path, seq_len: int | None) -> tuple[int, int | None]:
    meta = sidecar(model_file)
    return int(seq_len if seq_len is not None else (meta.get("seq_len") or 64)), meta.get("vocab_size")


def parse_runner_json(stdout: str, device: str, model_file: Path) -> dict:
    """The runner prints one JSON object last; an {"error"} object becomes EdgekdError."""
    line = next((ln for ln in reversed(stdout.strip().splitlines()) if ln.startswith("{")), None)
    if line is None:
        raise EdgekdError(f"profiling {model_file.name} on {device} printed no result: rerun with --debug")
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise EdgekdError(f"profiling {model_file.name} on {device} printed malformed JSON") from e
    if "error" in obj:
        kind = obj.get("kind")
        if kind == "no-runtime":
            raise EdgekdError(f"device {device} has no runtime for {model_file.name}: {obj['error']}")
        raise EdgekdError(f"device {device} could not run {model_file.name}: {obj['error']}")
    obj["device"] = device
    return obj


def _die_with_parent():
    """A preexec_fn that has the kernel kill the child when edgekd dies, however it dies (Linux); None
    where prctl is not there. Resolved here in the parent: the child only makes the call."""
    import os

    try:
        import ctypes
        import signal

        prctl, sig = ctypes.CDLL(None, use_errno=True).prctl, int(signal.SIGKILL)
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # edgekd died before the call
            os._exit(1)

    return arm


def run_child(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """subprocess.run for the runners' children (export/runtime.py, ssh, adb): a child never outlives edgekd.

    subprocess.run kills it on a timeout or an exception here (Ctrl-C); PR_SET_PDEATHSIG covers a
    SIGTERM or SIGKILL of edgekd itself, where no Python code runs.
    """
    if sys.platform.startswith("linux") and "preexec_fn" not in kw:
        kw["preexec_fn"] = _die_with_parent()
    return subprocess.run(cmd, timeout=timeout, **kw)
