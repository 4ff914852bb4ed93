"""Generation profiling: time to first token, prefill and decode tokens/s and memory of an exported LLM
(a `.litertlm` bundle or an onnxruntime-genai folder), here, on a board over ssh, or on a phone over adb.

Locally and over ssh the standalone `board_genbench.py` (shipped with the board timer) times the model with
its runtime's Python package; over adb, LiteRT-LM's own runtime binary for Android (`litert_lm_main
--benchmark`, given as --benchmark-binary) runs it and its BenchmarkInfo is parsed (profile/adb.py).
"""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.formats import FORMATS
from edgekd.profile.common import Runner, sidecar
from edgekd.profile.runners import runner_for
from edgekd.settings import Settings

GEN_KEYS = ("device", "runtime", "format", "precision", "prompt_len", "decode_len", "runs", "threads", "ttft_ms",
            "prefill_tok_s", "decode_tok_s", "init_ms", "peak_rss_mb", "size_mb")


def generative_format(path: Path) -> str:
    """The generative format of PATH, or one line saying what edgekd profiles with --generative."""
    if path.is_dir() and (path / "genai_config.json").is_file():
        return "onnx-genai"
    if path.is_file() and path.suffix == FORMATS["litert-lm"].suffix:
        return "litert-lm"
    if not path.exists():
        raise EdgekdError(f"{path} does not exist: give an exported .litertlm bundle or onnxruntime-genai folder "
                          f"(see `edgekd export --format litert-lm|onnx-genai`)")
    raise EdgekdError(f"{path} is neither a .litertlm bundle nor an onnxruntime-genai folder (genai_config.json): "
                      f"--generative profiles those")


def profile_generation(path, device: str | Runner = "local", prompt_len: int = 64, decode_len: int = 128, runs: int = 3,
                       warmup: int = 1, threads: int | None = None, *, timeout: float = 1800.0,
                       settings: Settings | None = None, parity: bool | None = None, **device_options) -> dict:
    """Time generation of PATH on `device` ("local", "ssh://USER@HOST[:PORT]", "adb[:SERIAL]", or its runner from
    `runner_for`/`check_device`, whose options then stand).

    `device_options`: what the device's runner reads (remote_python, identity_file, known_hosts, ... for ssh;
    benchmark_binary for adb). Returns DESIGN.md's generation keys (ttft_ms, prefill_tok_s, decode_tok_s as
    {mean, median, min, max, std, values} over `runs`) plus the runner's details, the device's `machine` and
    whether it is `emulated`, and `parity`: the export's greedy generation checked on the device against the
    PyTorch reference its record names (edgekd.export.parity.check_device_run), by default on every device but
    this machine (where the export's own check ran); {"checked": false, "why"} where it could not be.
    """
    from edgekd.checks import number

    for name, value, low in (("--prompt-len", prompt_len, 1), ("--decode-len", decode_len, 1), ("--runs", runs, 1),
                             ("--warmup", warmup, 0)):
        number(name, value, low=low, integer=True)
    runner = runner_for(device, settings, **device_options)
    runner.check_threads(threads)
    path = Path(path)
    fmt = generative_format(path)
    record, request, why = sidecar(path), None, None
    if parity if parity is not None else runner.scheme != "local":
        request, why = (None, runner.no_parity) if runner.no_parity else parity_request(record)
    stats = runner.profile_generation(path, fmt, prompt_len, decode_len, runs, warmup, threads, timeout,
                                      parity=request)
    stats["device"] = runner.device
    stats.setdefault("precision", record.get("precision"))  # the export's parity record says it
    stats["model"] = str(path)
    run = stats.pop("parity_run", None)
    if run is not None and "unavailable" in run:
        stats["parity"] = {"checked": False, "why": f"{run['unavailable']} on the device (edgekd device setup installs "
                                                    f"it)"}
    elif run is not None:
        from edgekd.export.parity import check_device_run

        stats["parity"] = check_device_run(record, run, stats)
    elif request is not None or why is not None:
        stats["parity"] = {"checked": False, "why": why}
    return {k: stats.get(k) for k in GEN_KEYS} | {k: v for k, v in stats.items() if k not in GEN_KEYS}


def parity_request(record: dict) -> tuple[dict | None, str | None]:
    """What the device runs for generation parity ({"prompts", "new_tokens"}: the export's own check's), its PyTorch
    reference rebuilt here first (so a reference that cannot be is said before the device works); or why not."""
    from edgekd.errors import EdgekdError
    from edgekd.export.parity import reference_of_record

    if not record:
        return None, "the export has no parity record beside it (FILE.json): export it with edgekd export"
    try:
        reference_of_record(record)
    except EdgekdError as e:
        return None, str(e)
    return {"prompts": record["run"]["prompt_ids"], "new_tokens": record["parity_reference"]["new_tokens"]}, None


def parity_failure(stats: dict) -> str | None:
    """The one line of a profile whose file failed parity on the device (generation, or a graph file's), or None."""
    p = stats.get("parity") or {}
    return p.get("error", "parity failed on the device") if p.get("passed") is False else None


def median_of(value) -> float | None:
    """A profile number that may be a spread object ({mean, median, ...}) or a plain number."""
    if isinstance(value, dict):
        return value.get("median", value.get("mean"))
    return value if value is None else float(value)


__all__ = ["GEN_KEYS", "profile_generation", "generative_format", "median_of", "parity_failure", "parity_request"]
