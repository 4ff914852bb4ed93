"""The environment edgekd reads, in one frozen object: `Settings.from_env()` is called once at the
CLI edge and the object is passed down, so no layer reads os.environ behind its caller's back.

Where a low-level module must still read one variable itself (the kernel switch in kernels/ops.py,
the fault hook in faults.py, the token cache switch in data/cache.py: each is consulted in code that
has no caller to pass it), it says so in a comment. torchrun's WORLD_SIZE and LOCAL_RANK stay torch's.
Every variable is documented in the README ("Environment variables").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

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

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        env = os.environ if env is None else env
        return cls(cache_dir=_cache_dir(env),
                   targets_dir=Path(env["EDGEKD_TARGETS_DIR"]) if env.get("EDGEKD_TARGETS_DIR") else None,
                   no_cache=bool(env.get("EDGEKD_NO_CACHE")), kernel=env.get("EDGEKD_KERNEL") or None,
                   fault=env.get("EDGEKD_FAULT") or None, ssh_key=env.get("EDGEKD_SSH_KEY") or None,
                   ssh_known_hosts=env.get("EDGEKD_SSH_KNOWN_HOSTS") or None,
                   ssh_insecure_host_key=env.get("EDGEKD_SSH_INSECURE_HOST_KEY", "").lower() in TRUE)


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
