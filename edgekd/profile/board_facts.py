#!/usr/bin/env python3
"""What a device has, as one JSON object: its machine (uname -m), Python, C library, threads, the runtimes
edgekd runs there and their versions, and whether it is emulated.

Standalone (python3's standard library only), shipped to a board beside the timers; `edgekd device check`
runs it alone, and the timers put `facts()`'s machine and emulated keys into every profile.

A device is `emulated` when it says so (/etc/edgekd-board.json, which edgekd's emulated arm64 board writes)
or when its CPU is not its machine: a user-mode emulator (qemu-user) reports the guest's machine from uname
while /proc/cpuinfo describes the host's x86 CPU. Emulated timings mean nothing; what runs there (the runtimes'
kernels for that ISA, and so the tokens they generate) is real.
"""

from __future__ import annotations

import json
import os
import platform
import sys

# Python distributions of the runtimes edgekd runs on a device, by what they run.
RUNTIME_DISTS = {"onnxruntime-genai": "onnx-genai folders", "onnxruntime": ".onnx files (and onnxruntime-genai)",
                 "litert-lm-api": ".litertlm bundles (LiteRT-LM's engine and benchmark)",
                 "ai-edge-litert": ".tflite files and the .litertlm bundle's parity run",
                 "litert-lm-builder": "reading a .litertlm bundle's sections", "numpy": "every runtime"}
BOARD_FILE = "/etc/edgekd-board.json"
X86_CPU_WORDS = ("GenuineIntel", "AuthenticAMD")


def _version(dist: str):
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def emulation(machine: str, cpuinfo: str | None = None, board_file: str = BOARD_FILE) -> str | None:
    """How the device is emulated, in words, or None for real hardware."""
    try:
        with open(board_file) as f:
            said = json.load(f).get("emulated")
        if said:
            return str(said)
    except (OSError, ValueError, AttributeError):
        pass
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read(65536)
        except OSError:
            cpuinfo = ""
    if machine not in ("x86_64", "i686", "i386", "AMD64") and any(w in cpuinfo for w in X86_CPU_WORDS):
        return f"{machine} userland on an x86 CPU (user-mode emulation)"
    return None


def facts() -> dict:
    """The device's facts (see the module's docstring)."""
    machine = platform.machine()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    how = emulation(machine)
    libc = platform.libc_ver()
    return {"machine": machine, "system": platform.system(), "python": platform.python_version(),
            "python_path": sys.executable, "python_tag": f"cp{sys.version_info[0]}{sys.version_info[1]}",
            "libc": f"{libc[0]} {libc[1]}".strip() or None, "threads": threads, "cpu_count": os.cpu_count(),
            "runtimes": {d: _version(d) for d in RUNTIME_DISTS}, "emulated": how is not None, "emulated_by": how}


if __name__ == "__main__":
    print(json.dumps(facts()))
