"""edgekd's own console, and the capture that keeps everyone else's output off it.

Converters, runtimes and libraries write warnings, logs and progress bars to stdout and stderr
from Python and from C++ (absl, torchao's loader, onnxruntime). A user should see only edgekd's
progress bars, tables and result lines, so the CLI points file descriptors 1 and 2 at a log file
and edgekd writes through `out()`/`err()`, which hold the real terminal. `--verbose` turns the
capture off. The Python API captures nothing: a library does not own its caller's streams.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

from rich.console import Console

_out: Optional[Console] = None
_err: Optional[Console] = None
_capture: Optional["_Capture"] = None


def _console(file=None, stderr: bool = False) -> Console:
    """Piped output gets a wide console so tables are not squeezed to 80 columns."""
    c = Console(file=file, stderr=stderr, highlight=False)
    return c if c.is_terminal else Console(file=file, stderr=stderr, highlight=False, width=160)


def out() -> Console:
    """Where results go (tables, result lines, `--json`): the real stdout."""
    return _out if _out is not None else _console()


def err() -> Console:
    """Where errors and progress bars go: the real stderr."""
    return _err if _err is not None else _console(stderr=True)


def echo(text: str = "") -> None:
    """One plain result line on stdout (no markup)."""
    out().print(text, markup=False, soft_wrap=True)


def note(text: str) -> None:
    """One plain line for people on stderr (what edgekd is doing, a warning of its own)."""
    err().print(text, markup=False, soft_wrap=True)


class _Capture:
    """fds 1 and 2 redirected into a log file; the real ones kept for edgekd's consoles."""

    def __init__(self, log: Path):
        self.real_out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace", closefd=True)
        self.real_err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace", closefd=True)
        self.log = log
        self._point_at(log, mode="w")

    def _point_at(self, log: Path, mode: str) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if mode == "w" else os.O_APPEND), 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self.log = log

    def move_to(self, log: Path) -> None:
        """Carry what was captured so far into `log` and keep capturing there."""
        log = Path(log)
        if log.resolve() == self.log.resolve():
            return
        sys.stdout.flush()
        sys.stderr.flush()
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as dst, open(self.log, "rb") as src:
            shutil.copyfileobj(src, dst)
        self._point_at(log, mode="a")

    def stop(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.real_out.fileno(), 1)
        os.dup2(self.real_err.fileno(), 2)
        import rich

        rich.reconfigure()
        self.real_out.close()
        self.real_err.close()


def default_log() -> Path:
    """The last command's log when there is no run directory to hold it."""
    from edgekd.settings import cache_dir

    try:
        d = cache_dir() / "logs"
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        d = Path(tempfile.gettempdir())
    return d / f"edgekd-{os.getpid()}.log"


_verbose = False


def start(verbose: bool) -> None:
    """The CLI's consoles; `verbose` keeps third-party output on the terminal."""
    global _verbose, _out, _err
    _verbose = verbose
    _out, _err = _console(), _console(stderr=True)


def capture() -> None:
    """From here on (a command's real work, after parsing and --help), third-party output goes to a log."""
    global _out, _err, _capture
    if _verbose or _capture is not None or sys.stdout is not sys.__stdout__ or sys.stderr is not sys.__stderr__:
        return  # --verbose, or someone already holds the streams (a test's capture, a notebook)
    # Libraries that honour these stay quiet even in the log; the rest is captured.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import logging
    import warnings

    warnings.simplefilter("default")
    logging.captureWarnings(True)
    try:
        _capture = _Capture(default_log())
    except OSError:  # no writable place for a log: keep the streams as they are
        _capture = None
        return
    _out, _err = _console(_capture.real_out), _console(_capture.real_err)
    import rich

    rich.reconfigure(file=_capture.real_err, highlight=False)


def log_into(path: str | os.PathLike) -> None:
    """A run directory exists: its log file holds the captured output from now on (and what came before)."""
    if _capture is not None:
        try:
            _capture.move_to(Path(path))
        except OSError:
            pass


def log_path() -> Optional[Path]:
    return _capture.log if _capture is not None else None


def stop() -> None:
    """Give the terminal back; remove the temporary log if nothing in it is worth keeping."""
    global _capture, _out, _err
    _out = _err = None
    if _capture is None:
        return
    _capture.stop()
    log = _capture.log
    _capture = None
    try:
        if log.parent.name == "logs" and log.name.startswith("edgekd-"):
            if log.stat().st_size == 0:
                log.unlink()
            keep = sorted(log.parent.glob("edgekd-*.log"), key=lambda p: p.stat().st_mtime)[:-5]
            for old in keep:  # the last few commands' logs, no more
                old.unlink(missing_ok=True)
    except OSError:
        pass
