"""What every runner shares: the model's sidecar metadata and turning runner output into stats or one error."""

from __future__ import annotations

import json
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
    return int(seq_len or meta.get("seq_len") or 64), meta.get("vocab_size")


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
