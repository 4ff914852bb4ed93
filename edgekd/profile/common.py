"""What every runner shares: the Runner interface, the scripts shipped to a device, the model's sidecar metadata
and turning a timer's output into stats or one error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.export import generative_runtime, graph_runtime
from edgekd.formats import FORMATS, GRAPH, format_names

# The standalone scripts a device runs, in the order they are shipped: the last one runs and imports the
# others from beside it (on a board) or from edgekd (here).
FACTS_FILES = (Path(__file__).with_name("board_facts.py"),)
TIMER_FILES = (*FACTS_FILES, Path(graph_runtime.__file__), Path(__file__).with_name("board_timer.py"))
GENBENCH_FILES = (*TIMER_FILES, Path(generative_runtime.__file__), Path(__file__).with_name("board_genbench.py"))

STAT_KEYS = ("device", "format", "runs", "threads", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "std_ms",
             "min_ms", "max_ms", "init_ms", "peak_rss_mb", "size_mb", "ops")


def check_model_file(model_file: str | Path) -> Path:
    path = Path(model_file)
    if not path.is_file():
        raise EdgekdError(f"model file {path} does not exist: give the path of an exported .onnx or .tflite "
                          f"(see `edgekd export`)")
    if path.suffix not in {FORMATS[f].suffix for f in format_names(GRAPH)}:
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


class Runner:
    """Where exported files are timed: one subclass per kind of device (local.py, ssh.py, adb.py), chosen by the
    scheme of the device string in runners.py. Made from the device string and the options of its kind (the
    others are ignored), which it checks without contacting the device."""

    scheme = ""  # the device string's scheme: "local", "ssh", "adb"
    usage = ""   # how such a device is written, for error lines: "ssh://USER@HOST[:PORT]"
    no_parity: str | None = None  # why generation parity cannot be checked on such a device (None: it can)
    no_graph_parity: str | None = None  # why a graph file's parity cannot be checked there (None: it can)

    def __init__(self, device: str, **options):
        self.device = device

    def describe(self) -> str:
        """The device as its profiles name it."""
        return self.device

    def check(self) -> None:
        """The device answers now (one EdgekdError line if not), so a typo or a switched-off board is caught
        before any work."""

    def check_threads(self, threads: int | None) -> None:
        """A thread count checked before any work where the device's cores are known here (locally); the
        others check it on the device."""

    def profile(self, model: Path, runs: int, warmup: int, threads: int | None, seq_len: int, vocab: int | None,
                timeout: float, parity: Path | None = None) -> dict:
        """Time one exported graph file (.onnx, .tflite): the board timer's statistics. `parity` (its check set,
        FILE.parity.npz): also run its parity rows there (`parity_run` in the statistics); a runner that cannot
        says why in its `no_graph_parity`."""
        raise NotImplementedError

    def profile_generation(self, path: Path, fmt: str, prompt_len: int, decode_len: int, runs: int, warmup: int,
                           threads: int | None, timeout: float, parity: dict | None = None) -> dict:
        """Time generation of one generative export of format `fmt`: board_genbench.py's statistics. `parity`
        ({"prompts", "new_tokens"}): also run the file's side of generation parity there (`parity_run` in the
        statistics); a runner that cannot says why in its `no_parity`."""
        raise NotImplementedError

    def facts(self, timeout: float = 300.0) -> dict:
        """What the device has (board_facts.py's keys: machine, python, runtimes and versions, threads, emulated)."""
        raise NotImplementedError


def timer_args(runs: int, warmup: int, threads: int | None, seq_len: int, vocab: int | None,
               parity: str | None = None) -> list[str]:
    """board_timer.py's command line; `parity`: its check set's path (relative: beside the model)."""
    args = ["--runs", str(runs), "--warmup", str(warmup), "--seq-len", str(seq_len)]
    if parity:
        args += ["--parity", parity]
    if threads:
        args += ["--threads", str(threads)]
    if vocab:
        args += ["--vocab", str(vocab)]
    return args


def genbench_args(prompt_len: int, decode_len: int, runs: int, warmup: int, threads: int | None,
                  parity: dict | None = None) -> list[str]:
    """board_genbench.py's command line; `parity` ({"prompts", "new_tokens"}) adds the file's parity run."""
    args = ["--prompt-len", str(prompt_len), "--decode-len", str(decode_len), "--runs", str(runs),
            "--warmup", str(warmup)]
    if parity:
        args += ["--parity-prompts", json.dumps(parity["prompts"], separators=(",", ":")),
                 "--parity-new-tokens", str(parity["new_tokens"])]
    return args + (["--threads", str(threads)] if threads else [])


def last_line(text: str, default: str = "no output") -> str:
    """The last line of a child's output (where its error is), or `default`."""
    return (text.strip().splitlines() or [default])[-1]


def die_with_parent():
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
    """subprocess.run for the runners' children (board_timer.py, ssh, adb): a child never outlives edgekd.

    subprocess.run kills it on a timeout or an exception here (Ctrl-C); PR_SET_PDEATHSIG covers a
    SIGTERM or SIGKILL of edgekd itself, where no Python code runs.
    """
    if sys.platform.startswith("linux") and "preexec_fn" not in kw:
        kw["preexec_fn"] = die_with_parent()
    return subprocess.run(cmd, timeout=timeout, **kw)
