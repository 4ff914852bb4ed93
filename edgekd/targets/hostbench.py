"""The `host` target's numbers: measured here once (about a second) and cached, since no datasheet
describes whatever machine edgekd happens to run on. Measuring is an explicit step
(`measure_target`), taken by the job and by `edgekd targets list|show`; parsing a file never measures."""

from __future__ import annotations

import os
import platform
import time
import tomllib
from pathlib import Path
from typing import Any

from edgekd.io import write_text
from edgekd.settings import Settings
from edgekd.targets.spec import Target, merge_facts, validate


def host_cache_file(settings: Settings | None = None) -> Path:
    return (settings or Settings.from_env()).cache_dir / "host.toml"


def _best(fn, repeats: int) -> float:
    """Fastest of `repeats` runs in this thread's CPU time: other processes' load does not count."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time_ns()
        fn()
        best = min(best, (time.thread_time_ns() - t0) / 1e9)
    return best


def cpu_model_name() -> str:
    """The CPU's marketing name, for benchmark records ("AMD EPYC", "Cortex-A76" boards say less)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("model name", "Model", "Hardware"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_info() -> dict[str, Any]:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    machine = platform.machine().lower()
    arch = "arm64" if machine in ("aarch64", "arm64") else "x86_64"
    flags, mhz = "", 0.0
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            k, _, v = line.partition(":")
            k = k.strip()
            if k in ("flags", "Features") and not flags:
                flags = v
            if k == "cpu MHz" and not mhz:
                mhz = float(v)
    except OSError:
        pass
    words = set(flags.split())
    simd = 512 if "avx512f" in words else 256 if "avx2" in words else 128
    if arch == "arm64":
        simd = 128
    try:
        ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        ram_mb = 4096
    return {"cpu.cores": cores, "cpu.big_cores": cores, "cpu.clock_ghz": round(mhz / 1000, 3) if mhz else 2.0,
            "cpu.arch": arch, "cpu.simd_width_bits": simd, "memory.ram_mb": int(ram_mb),
            "runtime.default_threads": cores}


def measure_host(seconds_hint: float = 1.0) -> dict[str, Any]:
    """Microbenchmark: fp32 matmul (torch), int8 matmul (torch._int_mm), a 64 MB copy (numpy).

    One thread, timed in thread CPU time, so a busy shared machine still measures the idle core;
    throughput is then scaled by the core count (what the latency model calls the all-core peak).
    """
    import numpy as np
    import torch

    facts = _cpu_info()
    cores = facts["cpu.cores"]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = 512
        a, b = torch.randn(n, n), torch.randn(n, n)
        t = _best(lambda: torch.mm(a, b), 8)
        gflops = 2 * n ** 3 / t / 1e9 * cores
        try:
            ai = torch.randint(-128, 127, (n, n), dtype=torch.int8)
            bi = torch.randint(-128, 127, (n, n), dtype=torch.int8)
            t = _best(lambda: torch._int_mm(ai, bi), 8)
            gops = 2 * n ** 3 / t / 1e9 * cores
        except (RuntimeError, AttributeError):  # no int8 GEMM on this build: assume the fp32 rate
            gops = gflops
    finally:
        torch.set_num_threads(old)
    x = np.ones(16 * 1024 * 1024, dtype=np.float32)  # 64 MB: larger than any L3 we expect
    y = np.empty_like(x)
    t = _best(lambda: np.copyto(y, x), 5)
    bw = 2 * x.nbytes / t / 1e9  # read + write
    facts.update({"cpu.peak_gflops_fp32": round(gflops, 2), "cpu.peak_gops_int8": round(gops, 2),
                  "memory.bandwidth_gbs": round(bw, 2)})
    return facts


def _to_toml(facts: dict[str, Any]) -> str:
    tables: dict[str, dict[str, Any]] = {}
    for dotted, v in facts.items():
        t, _, k = dotted.partition(".")
        tables.setdefault(t, {})[k] = v
    lines = ["# Measured by edgekd on this machine (edgekd/targets/hostbench.py); delete to re-measure.",
             f"measured_at = {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())!r}".replace("'", '"')]
    for t, kv in tables.items():
        lines.append(f"\n[{t}]")
        for k, v in kv.items():
            lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}")
    return "\n".join(lines) + "\n"


def host_facts(refresh: bool = False, settings: Settings | None = None) -> dict[str, Any]:
    """The cached measurements, measuring (and caching) them on first use or when `refresh`."""
    path = host_cache_file(settings)
    if path.is_file() and not refresh:
        try:
            data = tomllib.loads(path.read_text())
            out = {f"{t}.{k}": v for t, kv in data.items() if isinstance(kv, dict) for k, v in kv.items()}
            if "cpu.peak_gflops_fp32" in out and "memory.bandwidth_gbs" in out:
                return out
        except (tomllib.TOMLDecodeError, OSError):
            pass  # a corrupt cache is measured again
    from edgekd.console import note

    note(f"edgekd: measuring this machine for the 'host' target (once; cached in {path})")
    facts = measure_host()
    try:
        write_text(path, _to_toml(facts))
    except OSError:
        pass  # a read-only home still gets numbers, just not cached
    return facts


def measure_target(target: Target, refresh: bool = False, settings: Settings | None = None) -> Target:
    """`target` with its `measured` keys filled from this machine (cached, else a microbenchmark now);
    a datasheet target comes back as it is."""
    if not target.measured or (not target.unmeasured and not refresh):
        return target
    facts = host_facts(refresh, settings)
    data = merge_facts(target.data, {k: v for k, v in facts.items() if k in target.measured})
    validate(data, target.path)
    return Target(name=target.name, description=target.description, path=target.path, data=data)
