"""Measure exported models where they will run: locally, on a board over ssh, on a phone over adb."""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.profile.common import STAT_KEYS, check_model_file, input_shape_args
from edgekd.settings import Settings

__all__ = ["check_device", "profile_model", "target_defaults", "STAT_KEYS"]


def profile_model(model_file: str | Path, device: str = "local", runs: int = 50, warmup: int = 5,
                  threads: int | None = None, *, seq_len: int | None = None, remote_python: str = "python3",
                  identity_file: str | None = None, known_hosts: str | None = None,
                  insecure_host_key: bool = False, connect_timeout: int = 10,
                  benchmark_binary: str | None = None, timeout: float = 1800.0,
                  settings: Settings | None = None) -> dict:
    """Time `model_file` on `device` ("local", "ssh://USER@HOST[:PORT]", "adb[:SERIAL]").

    Returns DESIGN.md's keys (device, format, runs, threads, mean/p50/p90/p99/std/min/max_ms, init_ms,
    peak_rss_mb, size_mb, ops) plus runtime details. Token inputs use the seq_len and vocabulary from
    the export's parity record when there is one.
    """
    from edgekd.checks import number, optional_number, thread_count

    number("--runs", runs, low=1, integer=True)
    number("--warmup", warmup, low=0, integer=True)
    optional_number("--threads", threads, low=1, integer=True)
    optional_number("--seq-len", seq_len, low=1, integer=True)
    if device == "local":
        thread_count("--threads", threads)
    where = check_device(device, probe=False, identity_file=identity_file, known_hosts=known_hosts,
                         insecure_host_key=insecure_host_key, connect_timeout=connect_timeout,
                         benchmark_binary=benchmark_binary, settings=settings)
    path = check_model_file(model_file)
    length, vocab = input_shape_args(path, seq_len)
    if device == "local":
        from edgekd.profile.local import profile_local

        stats = profile_local(path, runs, warmup, threads, length, vocab, timeout=timeout)
    elif device.startswith("ssh://"):
        from edgekd.profile.ssh import profile_ssh

        stats = profile_ssh(path, where, runs, warmup, threads, length, vocab, remote_python, timeout)
    else:  # adb (check_device refused anything else)
        from edgekd.profile.adb import profile_adb

        stats = profile_adb(path, where, runs, warmup, threads, benchmark_binary, timeout)
    if stats.get("size_mb") is None:
        stats["size_mb"] = path.stat().st_size / 1e6
    stats["model"] = str(path)
    return {k: stats.get(k) for k in STAT_KEYS} | {k: v for k, v in stats.items() if k not in STAT_KEYS}


def check_device(device: str, *, probe: bool = True, identity_file: str | None = None,
                 known_hosts: str | None = None, insecure_host_key: bool = False, connect_timeout: int = 10,
                 benchmark_binary: str | None = None, settings: Settings | None = None, **_other):
    """A --device edgekd can use: well formed and (`probe`) answering now (ssh: `true` over BatchMode with a
    short connect timeout; adb: `adb get-state`), so a typo or a switched-off board is one line before any work.

    Returns what the runner needs: None (local), the SshTarget, or the adb serial (None: the only phone).
    """
    if device == "local":
        return None
    if device.startswith("ssh://"):
        from edgekd.profile.ssh import parse_ssh_url, probe_ssh

        target = parse_ssh_url(device, settings, identity_file=identity_file, known_hosts=known_hosts,
                               insecure_host_key=insecure_host_key, connect_timeout=connect_timeout)
        if probe:
            probe_ssh(target)
        return target
    if device == "adb" or device.startswith("adb:"):
        from edgekd.checks import input_file
        from edgekd.profile.adb import parse_adb_device, probe_adb

        serial = parse_adb_device(device)
        input_file(benchmark_binary, "--benchmark-binary")
        if probe:
            probe_adb(serial)
        return serial
    raise EdgekdError(f"unknown device {device!r}: use local, ssh://USER@HOST[:PORT] or adb[:SERIAL]")


def target_defaults(target: str | None, device: str | None, threads: int | None,
                    settings: Settings | None = None) -> tuple[str, int | None]:
    """A target file supplies the device kind and thread count the user did not give (the host's
    measured thread count is not measured for this: all allowed cores, as without --threads)."""
    if target is None:
        return device or "local", threads
    from edgekd.targets import load_target

    t = load_target(target, settings)
    method = t.access.get("method", "local")
    if device is None:
        if method == "ssh":
            raise EdgekdError(f"target {t.name} is reached over ssh: give --device ssh://USER@HOST[:PORT]")
        device = "adb" if method == "adb" else "local"
    return device, threads or t.runtime.get("default_threads")
