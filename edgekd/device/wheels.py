"""The runtimes a device needs, as wheels for its platform downloaded here (`pip download`): the same versions
this machine checked parity with, so what runs there is what was checked here, on the device's own ISA.

Used by `edgekd device setup` (installed into a venv on the device) and by the emulated arm64 board (board.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgekd.errors import EdgekdError

# What edgekd runs on a device, by distribution (the generative runtimes, their parity runners, numpy); their
# dependencies come with them.
DEVICE_DISTS = ("numpy", "onnxruntime", "onnxruntime-genai", "ai-edge-litert", "litert-lm-api", "litert-lm-builder")


def pinned(dists=DEVICE_DISTS) -> list[str]:
    """`dist==VERSION` of each distribution as installed here (what exported and checked the files), or the bare
    name where it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for d in dists:
        try:
            out.append(f"{d}=={version(d)}")
        except PackageNotFoundError:
            out.append(d)
    return out


def platform_tags(machine: str, libc: str | None) -> list[str]:
    """pip's --platform tags a Linux device with glibc `libc` ("glibc 2.36") and `machine` ("aarch64") takes."""
    arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(machine.lower(), machine)
    try:
        major, minor = (int(x) for x in (libc or "").split()[-1].split(".")[:2])
    except (ValueError, IndexError):
        raise EdgekdError(f"the device's C library is {libc or 'unknown'}: edgekd installs manylinux wheels, which "
                          f"need glibc; install the runtimes there yourself (pip install onnxruntime-genai "
                          f"litert-lm-api)") from None
    if major != 2 or minor < 17:
        raise EdgekdError(f"the device's glibc {major}.{minor} is older than 2.17, the oldest manylinux wheels "
                          f"need: update its OS")
    return [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)] + [f"manylinux2014_{arch}", "any"]


def download_wheels(dest: Path, machine: str, libc: str | None, python: str, requirements: list[str] | None = None,
                    timeout: float = 1800.0) -> list[Path]:
    """Download `requirements` (default: pinned()) and their dependencies as binary wheels for a CPython `python`
    ("3.11.2") Linux device of `machine` and `libc` into DEST; the wheels."""
    dest.mkdir(parents=True, exist_ok=True)
    version = "".join(python.split(".")[:2])
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "-q",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", version, "-d", str(dest)]
    for tag in platform_tags(machine, libc):
        cmd += ["--platform", tag]
    cmd += list(requirements or pinned())
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise EdgekdError(f"downloading the device's wheels took over {timeout:.0f}s: check the network") from e
    if proc.returncode != 0:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("ERROR")] or proc.stderr.strip().splitlines()
        raise EdgekdError(f"downloading wheels for a {machine} Python {python} device failed "
                          f"({(err or ['pip failed'])[-1][:200]}): check the network, or that these versions "
                          f"publish {machine} wheels")
    return sorted(dest.glob("*.whl"))
