"""Profiles on this machine in a fresh process, so peak RSS and thread pinning are the model's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.profile.common import (GENBENCH_FILES, TIMER_FILES, Runner, genbench_args, last_line, parse_runner_json,
                                   run_child, timer_args)


class LocalRunner(Runner):
    """`local`: the board timer run here by this Python."""

    scheme = "local"
    usage = "local"

    def __init__(self, device: str = "local", **options):
        if device != "local":
            raise EdgekdError(f"bad device {device!r}: write local")
        super().__init__(device)

    def check_threads(self, threads: int | None) -> None:
        from edgekd.checks import thread_count

        thread_count("--threads", threads)

    def profile(self, model: Path, runs: int, warmup: int, threads: int | None, seq_len: int, vocab: int | None,
                timeout: float = 1800.0, parity: Path | None = None) -> dict:
        return run_local(TIMER_FILES[-1], model, timer_args(runs, warmup, threads, seq_len, vocab,
                                                            str(parity.resolve()) if parity else None), timeout)

    def profile_generation(self, path: Path, fmt: str, prompt_len: int, decode_len: int, runs: int, warmup: int,
                           threads: int | None, timeout: float = 1800.0, parity: dict | None = None) -> dict:
        return run_local(GENBENCH_FILES[-1], path,
                         genbench_args(prompt_len, decode_len, runs, warmup, threads, parity), timeout)

    def facts(self, timeout: float = 300.0) -> dict:
        from edgekd.profile.board_facts import facts

        return facts() | {"device": "local"}


def run_local(script: Path, model: Path, args: list[str], timeout: float = 1800.0) -> dict:
    """Run a timer script on MODEL in a fresh python (the ssh runner's, here) and parse its JSON."""
    cmd = [sys.executable, str(script), str(model), *args]
    try:
        proc = run_child(cmd, timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired as e:
        raise EdgekdError(f"profiling {model.name} locally took over {timeout:.0f}s: use fewer --runs") from e
    if proc.returncode not in (0, 3, 4):
        raise EdgekdError(f"local profiling of {model.name} crashed (exit {proc.returncode}): {last_line(proc.stderr)}")
    return parse_runner_json(proc.stdout, "local", model)
