"""Bounds on what edgekd reads: every file a user names is a regular file no larger than a limit, read
with that bound (a device node, a FIFO or a socket is refused before it is opened for reading, so
`--data /dev/zero` is one line, not an exhausted machine), and gzip files are decompressed with the
same bound on what they expand to.

The limit is EDGEKD_MAX_READ_BYTES (bytes, or with a K/M/G/T suffix), default DEFAULT_MAX_READ_BYTES:
far more text than any distillation run reads. It is consulted here, where the readers (data files,
model configs, target files) have no caller that passes Settings, like `settings.cache_dir()`.
"""

from __future__ import annotations

import errno
import gzip
import os
import stat
import zlib
from pathlib import Path
from typing import Mapping, Optional

from edgekd.errors import EdgekdError

DEFAULT_MAX_READ_BYTES = 2 << 30  # 2 GiB
LIMIT_VARIABLE = "EDGEKD_MAX_READ_BYTES"
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_CHUNK = 1 << 20


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; one way of printing a size in every message."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_bytes(text: str, name: str = LIMIT_VARIABLE) -> int:
    """'4G', '512M', '1000' -> bytes; anything else is one line naming `name`."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _SUFFIXES and t[-1:] else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise EdgekdError(f"{name}={text!r} is not a size: give bytes, or a number with K, M, G or T (e.g. 8G)")
    return int(value * _SUFFIXES[unit])


def max_read_bytes(env: Optional[Mapping[str, str]] = None) -> int:
    """The most bytes edgekd reads from one user file (and from all the files of one --data folder)."""
    env = os.environ if env is None else env
    raw = env.get(LIMIT_VARIABLE)
    return parse_bytes(raw) if raw else DEFAULT_MAX_READ_BYTES


def _kind(mode: int) -> Optional[str]:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, word in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return word
    return "not a regular file"


def too_large(what: str, path, size: int, limit: int) -> EdgekdError:
    return EdgekdError(f"{what} {path} is {human_bytes(size)}, over the {human_bytes(limit)} edgekd reads from user "
                       f"files: set {LIMIT_VARIABLE} to a larger size (e.g. {LIMIT_VARIABLE}=8G), or pass less data")


def regular_file(path: str | os.PathLike, what: str, limit: Optional[int] = None) -> int:
    """The size of `path`, a regular file within the limit; anything else is one line. Never opens it."""
    limit = max_read_bytes() if limit is None else limit
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise EdgekdError(f"{what} {path} does not exist") from e
    except OSError as e:
        raise EdgekdError(f"cannot read {what} {path}: {e.strerror}") from e
    kind = _kind(st.st_mode)
    if kind == "a folder":
        raise EdgekdError(f"{what} {path} is a folder, not a file")
    if kind:
        raise EdgekdError(f"{what} {path} is {kind}, not a regular file: edgekd reads only regular files; copy the "
                          f"data into a file and pass that")
    if st.st_size > limit:
        raise too_large(what, path, st.st_size, limit)
    return st.st_size


def read_bytes(path: str | os.PathLike, what: str, limit: Optional[int] = None) -> bytes:
    """The bytes of the regular file `path`, at most the limit (a .gz file: decompressed, at most the limit)."""
    limit = max_read_bytes() if limit is None else limit
    regular_file(path, what, limit)
    try:  # O_NONBLOCK: a FIFO swapped in after the check still cannot block the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise EdgekdError(f"cannot read {what} {path}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        if _kind(os.fstat(fd).st_mode):
            raise EdgekdError(f"{what} {path} is not a regular file: edgekd reads only regular files")
        if str(path).endswith(".gz"):
            return _gunzip(f, path, what, limit)
        data = f.read(limit + 1)
    if len(data) > limit:  # the file grew while it was read
        raise too_large(what, path, len(data), limit)
    return data


def _gunzip(f, path, what: str, limit: int) -> bytes:
    """The decompressed bytes of the gzip stream `f`, stopped at the limit (a gzip bomb is one line)."""
    out, n = [], 0
    try:
        with gzip.GzipFile(fileobj=f) as g:
            while chunk := g.read(_CHUNK):
                n += len(chunk)
                if n > limit:
                    raise EdgekdError(f"{what} {path} decompresses to more than {human_bytes(limit)}, the most edgekd "
                                      f"reads from user files: set {LIMIT_VARIABLE} to a larger size, or pass less data")
                out.append(chunk)
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, OSError) and e.errno not in (None, errno.EIO):
            raise EdgekdError(f"cannot read {what} {path}: {e.strerror}") from e
        problem = "is cut off (the gzip stream ends early)" if isinstance(e, EOFError) else "is not valid gzip"
        raise EdgekdError(f"{what} {path} {problem}: re-compress it with gzip, or pass it uncompressed") from e
    return b"".join(out)


def folder_files(folder: Path, files: list[Path], what: str, limit: Optional[int] = None) -> None:
    """The files of one --data folder together stay within the limit (each a regular file)."""
    limit = max_read_bytes() if limit is None else limit
    total = sum(regular_file(f, what, limit) for f in files)
    if total > limit:
        raise too_large(what, folder, total, limit)


def file_digest(path: str | os.PathLike, h=None):
    """sha256 of a file's bytes, read in chunks (bounded memory whatever its size); `h` to extend one."""
    import hashlib

    h = hashlib.sha256() if h is None else h
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h


def data_path(path: str | os.PathLike, what: str = "--data") -> None:
    """A --data path is a folder or a regular file within the limit: checked before anything is loaded."""
    if not os.path.isdir(path):
        regular_file(path, what)
