#!/usr/bin/env python3
"""What a device has, as one JSON object: its machine (uname -m), Python, C library, threads, the runtimes
edgekd runs there and their versions, and whether it is emulated.

Standalone (python3's standard library only), shipped to a board beside the timers; `edgekd device check`
runs it alone, and the timers put `facts()`'s machine and emulated keys into every profile.

A device is `emulated` when it says so (/etc/edgekd-board.json, which edgekd's emulated arm64 board writes;
the core qemu emulates, QEMU_CPU, is added to its words) or when its CPU is not its machine: a user-mode
emulator (qemu-user) reports the guest's machine from uname while /proc/cpuinfo describes the host's x86 CPU. Emulated timings mean nothing; what runs there (the runtimes'
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
            core = os.environ.get("QEMU_CPU")
            return str(said) + (f"; emulated core: {core}" if core else "")
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


# The arm64 features whose kernels change a runtime's numbers (int8 dot products and matrix multiplies, SVE),
# from the kernel's AT_HWCAP / AT_HWCAP2 bits (linux/arch/arm64/include/uapi/asm/hwcap.h).
ARM64_HWCAP = {"asimd": (16, 1 << 1), "dotprod": (16, 1 << 20), "sve": (16, 1 << 22), "sve2": (26, 1 << 1),
               "i8mm": (26, 1 << 13), "bf16": (26, 1 << 14)}


def cpu_features(machine: str) -> list | None:
    """The ARM64_HWCAP features this arm64 CPU (or the core qemu emulates) has; None elsewhere."""
    if machine not in ("aarch64", "arm64"):
        return None
    try:
        import ctypes

        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        getauxval.argtypes = [ctypes.c_ulong]
        return [name for name, (at, bit) in ARM64_HWCAP.items() if getauxval(at) & bit]
    except (OSError, AttributeError):
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
            "runtimes": {d: _version(d) for d in RUNTIME_DISTS}, "emulated": how is not None, "emulated_by": how,
            "cpu_features": cpu_features(machine)}


if __name__ == "__main__":
    print(json.dumps(facts()))
