"""Profiles on an Android phone over adb, pinned to the big cores: a .tflite with TFLite's benchmark_model, a
.litertlm bundle's generation with LiteRT-LM's litert_lm_main (both given as --benchmark-binary or found there)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.profile.adb_output import LITERT_LM_BINARY, parse_benchmark_info, parse_benchmark_output
from edgekd.profile.board_genbench import spread
from edgekd.profile.board_timer import pick_big_cores
from edgekd.profile.common import Runner, run_child

REMOTE_ROOT = "/data/local/tmp/edgekd"
# Over adb, LiteRT-LM's Android binary takes and gives text, not token ids: greedy token parity is not checked there.
ADB_PARITY_UNCHECKED = (f"over adb the phone runs LiteRT-LM's {LITERT_LM_BINARY}, which takes and returns text, not "
                        "token ids: generation parity was not checked on the phone (only here, on this machine's ISA)")
DEVICE_BENCHMARK = "/data/local/tmp/benchmark_model"
INSTALL_HINT = ("install Android platform-tools (https://developer.android.com/tools/releases/platform-tools, "
                "or apt-get install adb) and put adb on PATH")
FREQ_SCRIPT = ('for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; '
               'do echo "$f $(cat $f)"; done')


class AdbRunner(Runner):
    """`adb` (the only phone) or `adb:SERIAL`."""

    scheme = "adb"
    usage = "adb[:SERIAL]"
    no_parity = ADB_PARITY_UNCHECKED
    no_graph_parity = ("over adb TFLite's benchmark binary times the file and gives no outputs: parity was not checked "
                       "on the phone (only here, on this machine's ISA)")

    def __init__(self, device: str, *, benchmark_binary: str | None = None, **options):
        from edgekd.checks import input_file

        super().__init__(device)
        self.serial = parse_adb_device(device)
        self.benchmark_binary = benchmark_binary
        input_file(benchmark_binary, "--benchmark-binary")

    def describe(self) -> str:
        return f"adb:{self.serial}" if self.serial else "adb"

    def check(self) -> None:
        probe_adb(self.serial)

    def profile(self, model: Path, runs: int, warmup: int, threads: int | None, seq_len: int, vocab: int | None,
                timeout: float = 1800.0, parity: Path | None = None) -> dict:
        return profile_adb(model, self.serial, runs, warmup, threads, self.benchmark_binary, timeout)

    def profile_generation(self, path: Path, fmt: str, prompt_len: int, decode_len: int, runs: int, warmup: int,
                           threads: int | None, timeout: float = 1800.0, parity: dict | None = None) -> dict:
        if fmt != "litert-lm":
            raise EdgekdError(f"over adb edgekd profiles .litertlm bundles with LiteRT-LM's {LITERT_LM_BINARY}: export "
                              f"{path.name} with --format litert-lm")
        stats = profile_adb_generation(path, self.serial, prompt_len, decode_len, runs, warmup, threads,
                                       self.benchmark_binary, timeout)
        return stats | {"emulated": False}

    def facts(self, timeout: float = 300.0) -> dict:
        if shutil.which("adb") is None:
            raise EdgekdError(f"adb not found on PATH: {INSTALL_HINT}")
        out = adb_run([*adb_base(self.serial), "shell", "uname -m; getprop ro.build.version.release; nproc"],
                      timeout).stdout.split()
        return {"device": self.describe(), "machine": out[0] if out else None, "system": "Android",
                "android": out[1] if len(out) > 1 else None, "threads": int(out[2]) if len(out) > 2 else None,
                "python": None, "runtimes": {LITERT_LM_BINARY: "pushed per run (--benchmark-binary)"},
                "emulated": False, "emulated_by": None}


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


def adb_run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """One adb command; a timeout, a missing phone or a failure is one EdgekdError line."""
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
    state = adb_run([*adb_base(serial), "get-state"], 15).stdout.strip()
    if state != "device":
        raise EdgekdError(f"adb{':' + serial if serial else ''}: the phone is {state or 'not ready'}: connect it, "
                          f"enable USB debugging and accept the key")


def big_cores_of(serial: str | None, threads: int | None, label: str) -> tuple[int, list[int]]:
    """(threads, cores) to run on: `threads` (checked against the phone's cores) or every fast core, on the
    fastest cores by their max clock."""
    freqs = parse_cpu_freqs(adb_run([*adb_base(serial), "shell", FREQ_SCRIPT], 30).stdout)
    if threads is not None and freqs:
        from edgekd.checks import thread_count

        thread_count("--threads", threads, len(freqs), where=label)
    n = threads or default_threads(freqs)
    return n, pick_big_cores(freqs, n) if freqs else list(range(n))


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
    n, cores = big_cores_of(serial, threads, label)
    cmds = build_commands(str(model_file), serial, cpu_mask(cores), n, runs, warmup, benchmark_binary)
    try:
        for key in ("mkdir", "push_model", "push_binary", "chmod", "check_binary"):
            if key in cmds:
                proc = adb_run(cmds[key], timeout)
                if key == "check_binary" and "present" not in proc.stdout:
                    raise EdgekdError(f"{label}: no benchmark_model at {DEVICE_BENCHMARK}: pass --benchmark-binary "
                                      f"PATH to TFLite's android_aarch64_benchmark_model")
        stats = parse_benchmark_output(adb_run(cmds["run"], timeout).stdout)
    finally:
        try:
            adb_run(cmds["cleanup"], 60)
        except EdgekdError:
            pass
    stats.update({"device": label, "cores": cores, "threads": stats.get("threads") or n})
    return stats


# --- generation: LiteRT-LM's runtime binary for Android -------------------------------------------

def litert_lm_args(binary: str, model: str, prompt_len: int, decode_len: int, threads: int) -> list[str]:
    return [binary, "--backend=cpu", f"--model_path={model}", "--benchmark",
            f"--benchmark_prefill_tokens={prompt_len}", f"--benchmark_decode_tokens={decode_len}",
            f"--max_num_tokens={prompt_len + decode_len}", f"--num_cpu_threads={threads}", "--async=false",
            "--report_peak_memory_footprint"]


def summarize_runs(per_run: list[dict]) -> dict:
    """The runs' numbers as the profile reports them (spreads for ttft and speeds)."""
    out = {k: spread([r[k] for r in per_run]) for k in ("ttft_ms", "prefill_tok_s", "decode_tok_s")}
    peaks = [r["peak_rss_mb"] for r in per_run if r.get("peak_rss_mb") is not None]
    out.update(runs=len(per_run), init_ms=per_run[0]["init_ms"], peak_rss_mb=max(peaks) if peaks else None,
               prompt_tokens=per_run[0]["prompt_tokens"], decode_tokens=per_run[0]["decode_tokens"])
    return out


def profile_adb_generation(model: Path, serial: str | None, prompt_len: int, decode_len: int, runs: int, warmup: int,
                           threads: int | None, benchmark_binary: str | None, timeout: float = 1800.0) -> dict:
    """Push the bundle and litert_lm_main, run its benchmark warmup + runs times on the big cores, clean up."""
    if shutil.which("adb") is None:
        raise EdgekdError(f"adb not found on PATH: {INSTALL_HINT}")
    if not benchmark_binary or not Path(benchmark_binary).is_file():
        raise EdgekdError(f"--benchmark-binary: give the path of LiteRT-LM's {LITERT_LM_BINARY} for Android arm64 "
                          f"(from the LiteRT-LM releases), got {benchmark_binary!r}")
    label = f"adb:{serial}" if serial else "adb"
    base = adb_base(serial)
    n, cores = big_cores_of(serial, threads, label)
    root, q = REMOTE_ROOT, shlex.quote
    binary, remote_model = f"{root}/{LITERT_LM_BINARY}", f"{root}/{model.name}"
    run = f"taskset {cpu_mask(cores)} " + " ".join(q(a) for a in litert_lm_args(binary, remote_model, prompt_len,
                                                                                 decode_len, n))
    per_run = []
    try:
        for cmd in ([*base, "shell", f"mkdir -p {q(root)}"], [*base, "push", str(model), remote_model],
                    [*base, "push", str(benchmark_binary), binary], [*base, "shell", f"chmod 755 {q(binary)}"]):
            adb_run(cmd, timeout)
        for i in range(warmup + runs):
            got = parse_benchmark_info(adb_run([*base, "shell", f"{run} 2>&1"], timeout).stdout)
            if i >= warmup:
                per_run.append(got)
    finally:
        try:
            adb_run([*base, "shell", f"rm -rf {q(root)}"], 60)
        except EdgekdError:
            pass
    return {"format": "litert-lm", "runtime": LITERT_LM_BINARY, "prompt_len": prompt_len, "decode_len": decode_len,
            "threads": n, "cores": cores, "warmup": warmup, "size_mb": model.stat().st_size / 1e6,
            **summarize_runs(per_run), "device": label}
