"""Generation profiling: time to first token, prefill and decode tokens/s and memory of an exported LLM
(a `.litertlm` bundle or an onnxruntime-genai folder), here, on a board over ssh, or on a phone over adb.

Locally and over ssh the standalone runner `genbench.py` (shipped with export/runtime.py) times the
model with its runtime's Python package; over adb, LiteRT-LM's own runtime binary for Android
(`litert_lm_main --benchmark`, given as --benchmark-binary) runs it and its BenchmarkInfo is parsed.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.export import runtime
from edgekd.profile.common import sidecar
from edgekd.settings import Settings

GEN_KEYS = ("device", "runtime", "format", "precision", "prompt_len", "decode_len", "runs", "threads", "ttft_ms",
            "prefill_tok_s", "decode_tok_s", "init_ms", "peak_rss_mb", "size_mb")
GENBENCH = Path(__file__).with_name("genbench.py")
RUNNERS = [Path(runtime.__file__), GENBENCH]  # what a board needs, in order: genbench imports runtime
LITERT_LM_BINARY = "litert_lm_main"


def generative_format(path: Path) -> str:
    """The generative format of PATH, or one line saying what edgekd profiles with --generative."""
    if path.is_dir() and (path / "genai_config.json").is_file():
        return "onnx-genai"
    if path.is_file() and path.suffix == ".litertlm":
        return "litert-lm"
    if not path.exists():
        raise EdgekdError(f"{path} does not exist: give an exported .litertlm bundle or onnxruntime-genai folder "
                          f"(see `edgekd export --format litert-lm|onnx-genai`)")
    raise EdgekdError(f"{path} is neither a .litertlm bundle nor an onnxruntime-genai folder (genai_config.json): "
                      f"--generative profiles those")


def bench_args(prompt_len: int, decode_len: int, runs: int, warmup: int, threads: int | None) -> list[str]:
    args = ["--prompt-len", str(prompt_len), "--decode-len", str(decode_len), "--runs", str(runs),
            "--warmup", str(warmup)]
    return args + (["--threads", str(threads)] if threads else [])


def profile_generation(path, device: str = "local", prompt_len: int = 64, decode_len: int = 128, runs: int = 3,
                       warmup: int = 1, threads: int | None = None, *, remote_python: str = "python3",
                       benchmark_binary: str | None = None, timeout: float = 1800.0,
                       settings: Settings | None = None, **ssh_options) -> dict:
    """Time generation of PATH on `device` ("local", "ssh://USER@HOST[:PORT]", "adb[:SERIAL]").

    Returns DESIGN.md's generation keys (ttft_ms, prefill_tok_s, decode_tok_s as {mean, median, min, max,
    std, values} over `runs`) plus the runner's details.
    """
    from edgekd.checks import number, thread_count
    from edgekd.profile import check_device

    for name, value, low in (("--prompt-len", prompt_len, 1), ("--decode-len", decode_len, 1), ("--runs", runs, 1),
                             ("--warmup", warmup, 0)):
        number(name, value, low=low, integer=True)
    if device == "local":
        thread_count("--threads", threads)
    path = Path(path)
    fmt = generative_format(path)
    where = check_device(device, probe=False, benchmark_binary=benchmark_binary, settings=settings, **ssh_options)
    args = bench_args(prompt_len, decode_len, runs, warmup, threads)
    if device == "local":
        from edgekd.profile.local import run_local

        stats = run_local(GENBENCH, path, args, timeout)
    elif device.startswith("ssh://"):
        from edgekd.profile.ssh import run_remote

        stats = run_remote(where, path, RUNNERS, args, remote_python, timeout)
    else:
        if fmt != "litert-lm":
            raise EdgekdError(f"over adb edgekd profiles .litertlm bundles with LiteRT-LM's {LITERT_LM_BINARY}: export "
                              f"{path.name} with --format litert-lm")
        stats = profile_adb_generation(path, where, prompt_len, decode_len, runs, warmup, threads, benchmark_binary,
                                       timeout)
    stats["device"] = device if device != "local" else "local"
    stats.setdefault("precision", sidecar(path).get("precision"))  # the export's parity record says it
    stats["model"] = str(path)
    return {k: stats.get(k) for k in GEN_KEYS} | {k: v for k, v in stats.items() if k not in GEN_KEYS}


# --- adb: LiteRT-LM's runtime binary for Android ---------------------------------------------------

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


def litert_lm_args(binary: str, model: str, prompt_len: int, decode_len: int, threads: int) -> list[str]:
    return [binary, "--backend=cpu", f"--model_path={model}", "--benchmark",
            f"--benchmark_prefill_tokens={prompt_len}", f"--benchmark_decode_tokens={decode_len}",
            f"--max_num_tokens={prompt_len + decode_len}", f"--num_cpu_threads={threads}", "--async=false",
            "--report_peak_memory_footprint"]


def summarize_runs(per_run: list[dict]) -> dict:
    """The runs' numbers as the profile reports them (spreads for ttft and speeds)."""
    from edgekd.profile.genbench import spread

    out = {k: spread([r[k] for r in per_run]) for k in ("ttft_ms", "prefill_tok_s", "decode_tok_s")}
    peaks = [r["peak_rss_mb"] for r in per_run if r.get("peak_rss_mb") is not None]
    out.update(runs=len(per_run), init_ms=per_run[0]["init_ms"], peak_rss_mb=max(peaks) if peaks else None,
               prompt_tokens=per_run[0]["prompt_tokens"], decode_tokens=per_run[0]["decode_tokens"])
    return out


def profile_adb_generation(model: Path, serial: str | None, prompt_len: int, decode_len: int, runs: int, warmup: int,
                           threads: int | None, benchmark_binary: str | None, timeout: float = 1800.0) -> dict:
    """Push the bundle and litert_lm_main, run its benchmark warmup + runs times on the big cores, clean up."""
    from edgekd.profile import adb

    if shutil.which("adb") is None:
        raise EdgekdError(f"adb not found on PATH: {adb.INSTALL_HINT}")
    if not benchmark_binary or not Path(benchmark_binary).is_file():
        raise EdgekdError(f"--benchmark-binary: give the path of LiteRT-LM's {LITERT_LM_BINARY} for Android arm64 "
                          f"(from the LiteRT-LM releases), got {benchmark_binary!r}")
    label = f"adb:{serial}" if serial else "adb"
    base = adb.adb_base(serial)
    freqs = adb.parse_cpu_freqs(adb._adb([*base, "shell", adb.FREQ_SCRIPT], 30).stdout)
    n = threads or adb.default_threads(freqs)
    cores = runtime.pick_big_cores(freqs, n) if freqs else list(range(n))
    root, q = adb.REMOTE_ROOT, shlex.quote
    binary, remote_model = f"{root}/{LITERT_LM_BINARY}", f"{root}/{model.name}"
    run = f"taskset {adb.cpu_mask(cores)} " + " ".join(q(a) for a in litert_lm_args(binary, remote_model, prompt_len,
                                                                                      decode_len, n))
    per_run = []
    try:
        for cmd in ([*base, "shell", f"mkdir -p {q(root)}"], [*base, "push", str(model), remote_model],
                    [*base, "push", str(benchmark_binary), binary], [*base, "shell", f"chmod 755 {q(binary)}"]):
            adb._adb(cmd, timeout)
        for i in range(warmup + runs):
            got = parse_benchmark_info(adb._adb([*base, "shell", f"{run} 2>&1"], timeout).stdout)
            if i >= warmup:
                per_run.append(got)
    finally:
        try:
            adb._adb([*base, "shell", f"rm -rf {q(root)}"], 60)
        except EdgekdError:
            pass
    return {"format": "litert-lm", "runtime": LITERT_LM_BINARY, "prompt_len": prompt_len, "decode_len": decode_len,
            "threads": n, "cores": cores, "warmup": warmup, "size_mb": model.stat().st_size / 1e6,
            **summarize_runs(per_run), "device": label}


def median_of(value) -> float | None:
    """A profile number that may be a spread object ({mean, median, ...}) or a plain number."""
    if isinstance(value, dict):
        return value.get("median", value.get("mean"))
    return value if value is None else float(value)


__all__ = ["GEN_KEYS", "profile_generation", "parse_benchmark_info", "generative_format", "median_of"]
