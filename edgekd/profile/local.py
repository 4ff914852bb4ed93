"""Profiles on this machine in a fresh process, so peak RSS and thread pinning are the model's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.export import runtime
from edgekd.profile.common import parse_runner_json, run_child

RUNNER = Path(runtime.__file__)  # a standalone script: shipped to boards and phones as it is


def runner_args(runs: int, warmup: int, threads: int | None, seq_len: int, vocab: int | None) -> list[str]:
    args = ["--runs", str(runs), "--warmup", str(warmup), "--seq-len", str(seq_len)]
    if threads:
        args += ["--threads", str(threads)]
    if vocab:
        args += ["--vocab", str(vocab)]
    return args


def profile_local(model_file: Path, runs: int, warmup: int, threads: int | None, seq_len: int,
                  vocab: int | None, timeout: float = 1800.0) -> dict:
    return run_local(RUNNER, model_file, runner_args(runs, warmup, threads, seq_len, vocab), timeout)


def run_local(script: Path, model: Path, args: list[str], timeout: float = 1800.0) -> dict:
    """Run a runner script on MODEL in a fresh python (the ssh runner's, here) and parse its JSON."""
    cmd = [sys.executable, str(script), str(model), *args]
    try:
        proc = run_child(cmd, timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired as e:
        raise EdgekdError(f"profiling {model.name} locally took over {timeout:.0f}s: use fewer --runs") from e
    if proc.returncode not in (0, 3, 4):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgekdError(f"local profiling of {model.name} crashed (exit {proc.returncode}): {tail}")
    return parse_runner_json(proc.stdout, "local", model)
