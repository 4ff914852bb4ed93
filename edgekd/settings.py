"""The environment edgekd reads, in one frozen object: `Settings.from_env()` is called once at the
CLI edge (or by a Python API entry point given none) and the object is passed down, so no layer reads
os.environ behind its caller's back; torchrun's RANK, WORLD_SIZE and LOCAL_RANK are read here too.

Two switches are consulted deep in code that has no caller to pass them, so an edge hands them over
once (`edgekd.distill.apply_settings`): the kernels' reference switch (`kernels.force_reference`) and
the fault hook (`faults.arm`). Every variable is documented in the README ("Environment variables").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from edgekd.errors import EdgekdError

TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class Settings:
    """What the environment says; the Python API builds one from os.environ when given none."""

    cache_dir: Path                       # EDGEKD_CACHE, else $XDG_CACHE_HOME/edgekd, else ~/.cache/edgekd
    targets_dir: Optional[Path] = None    # EDGEKD_TARGETS_DIR: target files used before the packaged ones
    no_cache: bool = False                # EDGEKD_NO_CACHE: never read or write the token cache
    kernel: Optional[str] = None          # EDGEKD_KERNEL=reference: the pure-PyTorch loss
    fault: Optional[str] = None           # EDGEKD_FAULT=kill:PHASE (resume tests)
    ssh_key: Optional[str] = None         # EDGEKD_SSH_KEY: default --identity-file
    ssh_known_hosts: Optional[str] = None  # EDGEKD_SSH_KNOWN_HOSTS: default --known-hosts
    ssh_insecure_host_key: bool = False   # EDGEKD_SSH_INSECURE_HOST_KEY: no host key check without --known-hosts
    board_dir: Optional[Path] = None      # EDGEKD_BOARD_DIR: the emulated arm64 board (default CACHE/arm64-board)
    rank: int = 0                         # RANK (torchrun): this process's rank
    world_size: int = 1                   # WORLD_SIZE (torchrun): the processes of the run
    local_rank: int = 0                   # LOCAL_RANK (torchrun): this process's GPU on its machine

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        env = os.environ if env is None else env
        return cls(cache_dir=_cache_dir(env),
                   targets_dir=Path(env["EDGEKD_TARGETS_DIR"]) if env.get("EDGEKD_TARGETS_DIR") else None,
                   no_cache=bool(env.get("EDGEKD_NO_CACHE")), kernel=env.get("EDGEKD_KERNEL") or None,
                   fault=env.get("EDGEKD_FAULT") or None, ssh_key=env.get("EDGEKD_SSH_KEY") or None,
                   ssh_known_hosts=env.get("EDGEKD_SSH_KNOWN_HOSTS") or None,
                   ssh_insecure_host_key=env.get("EDGEKD_SSH_INSECURE_HOST_KEY", "").lower() in TRUE,
                   board_dir=Path(env["EDGEKD_BOARD_DIR"]) if env.get("EDGEKD_BOARD_DIR") else None,
                   rank=_int(env, "RANK", 0), world_size=_int(env, "WORLD_SIZE", 1),
                   local_rank=_int(env, "LOCAL_RANK", 0))


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name) or str(default)
    try:
        return int(value)
    except ValueError:
        raise EdgekdError(f"{name}={value!r} is not an integer: torchrun sets it; unset it outside torchrun") from None


def _cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("EDGEKD_CACHE")
    if base:
        return Path(base).expanduser().absolute()
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser().absolute() / "edgekd"


def cache_dir() -> Path:
    """The one cache directory (token cache, host facts, saved calibrations, logs), from the environment
    now: for the modules that have no Settings passed to them."""
    return _cache_dir(os.environ)
