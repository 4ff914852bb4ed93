"""Kernel benchmark: eager PyTorch, torch.compile and the fused kernel on KD+CE forward+backward.

Everything is measured in one run with the variants interleaved round by round, so the ratios hold
even when the load changes: the best time of repeats (and the median beside it), extra peak memory
over the inputs, and the memory floor (one read of both inputs and one
write of the gradient at a copy bandwidth measured in the same run).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from edgekd.checks import KERNEL_DTYPES
from edgekd.io import write_json
from edgekd.kernels import backend, eager_kd_loss, kd_loss

DTYPES = {name: getattr(torch, name) for name in KERNEL_DTYPES}
T, ALPHA = 2.0, 0.5


def eager_kd_ce(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss as people write it in eager PyTorch, in the inputs' dtype (the baseline to beat)."""
    return eager_kd_loss(s, t, labels, temperature=T, alpha=ALPHA, dtype=None)


def fused_kd_ce(s, t, labels):
    return kd_loss(s, t, labels, temperature=T, alpha=ALPHA)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Extra peak memory of a block: CUDA allocator stats, or VmHWM after resetting it (Linux)."""

    def __init__(self, device):
        self.device = device
        self.extra_bytes: Optional[int] = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.base = _rss_kb("VmRSS:") * 1024
            except OSError:
                self.base = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.extra_bytes = torch.cuda.max_memory_allocated() - self.base
        elif self.base is not None:
            self.extra_bytes = _rss_kb("VmHWM:") * 1024 - self.base


def _load() -> str:
    """The 1/5/15-minute load average, recorded beside every number (a loaded machine lies)."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def copy_bandwidth(device, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes read + written per second by a large tensor copy: the machine's memory ceiling."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    times = []
    dst.copy_(src)  # pre-fault the destination: the floor is streaming, not page faults
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n * 4 / min(times)


def interleaved(steps: dict, repeats: int, device) -> dict:
    """Time every step once per round, round after round, so load changes hit all of them alike.

    `steps` maps a name to a callable that runs one forward+backward and returns the loss. Each gets a
    warm-up (and compilation) call and one call under the peak-memory probe first. Returns per name the
    best and the median wall seconds, the best CPU seconds (all threads: a shared machine's wall clock
    also counts other people's work), the extra peak memory and the loss, or the error it raised.
    """
    out, ok = {}, {}
    for name, step in steps.items():
        try:
            value = float(step())
            with PeakMemory(device) as mem:
                step()
                _sync(device)
            ok[name] = (step, mem.extra_bytes, value)
        except Exception as e:  # torch.compile may not work everywhere
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    walls = {n: [] for n in ok}
    cpus = {n: [] for n in ok}
    for _ in range(repeats):
        for name, (step, _extra, _value) in ok.items():
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            _sync(device)
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
    for name, (_step, extra, value) in ok.items():
        out[name] = {"seconds": min(walls[name]), "median_seconds": statistics.median(walls[name]),
                     "cpu_seconds": min(cpus[name]), "loss": value, "extra_bytes": extra}
    return {name: {"variant": name, **out[name]} for name in steps}


def logits_step(fn: Callable, s0, t, labels) -> Callable[[], float]:
    """One forward+backward of a logits-level loss on a fresh leaf copy of the student's logits."""
    s = s0.detach().clone().requires_grad_(True)

    def step():
        loss = fn(s, t, labels)
        loss.backward()
        s.grad = None
        return loss.detach()
    return step


def bench_case(rows: int, vocab: int, dtype: torch.dtype, device, repeats: int, use_compile: bool, bw: float):
    g = torch.Generator(device="cpu").manual_seed(0)
    s = (torch.randn(rows, vocab, generator=g) * 2).to(dtype).to(device)
    t = (torch.randn(rows, vocab, generator=g) * 2).to(dtype).to(device)
    labels = torch.randint(0, vocab, (rows,), generator=g).to(device)
    esize = s.element_size()
    grad_bytes = rows * vocab * esize
    floor_bytes = rows * vocab * (esize + t.element_size() + esize)
    floor_s = floor_bytes / bw
    variants = [("eager", eager_kd_ce)]
    if use_compile:
        variants.append(("torch.compile", torch.compile(eager_kd_ce, dynamic=False)))
    variants.append(("fused", fused_kd_ce))
    results = []
    timed = interleaved({name: logits_step(fn, s, t, labels) for name, fn in variants}, repeats, device)
    for r in timed.values():
        if "error" not in r:
            extra = r.pop("extra_bytes")
            r.update({"peak_extra_mb": None if extra is None else extra / 2**20,
                      "beyond_grad_mb": None if extra is None else (extra - grad_bytes) / 2**20,
                      "floor_ratio": r["seconds"] / floor_s})
        results.append(r)
    eager = results[0]
    for r in results:
        if "seconds" in r and "seconds" in eager:
            r["speedup_vs_eager"] = eager["seconds"] / r["seconds"]
            r["cpu_speedup_vs_eager"] = eager["cpu_seconds"] / r["cpu_seconds"]
    return {"rows": rows, "vocab": vocab, "dtype": str(dtype).replace("torch.", ""),
            "floor_ms": floor_s * 1e3, "grad_mb": grad_bytes / 2**20, "results": results}


def main(rows=None, vocab=None, dtype=None, device="cpu", repeats=5, use_compile=True, out=None):
    """Run the benchmark grid, print a table and write JSON; returns the JSON object."""
    from rich.table import Table

    from edgekd.checks import kernel_bench_args, output_file
    from edgekd.console import out as console_out

    kernel_bench_args(rows, vocab, repeats, device, out, dtype)
    out_path = output_file(Path(out) if out else Path("benchmarks") / f"kernel_bench_{device}.json")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from edgekd.errors import EdgekdError

        raise EdgekdError("--device cuda: no CUDA GPU is visible; run on a GPU machine or use --device cpu")
    rows_list = [rows] if rows is not None else [2048]
    vocabs = [vocab] if vocab is not None else [32000, 128256]
    dtypes = [DTYPES[dtype]] if dtype else [torch.float32, torch.bfloat16]
    console = console_out()
    load_before = _load()
    bw = copy_bandwidth(dev)
    console.print(f"[bold]edgekd kernel bench[/] on {device} ({platform.processor() or platform.machine()}, "
                  f"{torch.get_num_threads()} threads) — backend {backend(dev.type)}, copy bandwidth "
                  f"{bw / 1e9:.1f} GB/s (read+write)")
    cases = []
    for r in rows_list:
        for v in vocabs:
            for dt in dtypes:
                console.print(f"  measuring {r} × {v} {str(dt).replace('torch.', '')} ...")
                cases.append(bench_case(r, v, dt, dev, repeats, use_compile, bw))
    table = Table(title=f"KD + CE forward+backward (best of {repeats} interleaved repeats; load {load_before} → {_load()})")
    for col in ("rows × vocab", "dtype", "variant", "ms", "× eager", "CPU ms", "CPU × eager", "floor ms",
                "× floor", "extra MB", "beyond grad MB"):
        table.add_column(col, justify="right")
    for c in cases:
        for r in c["results"]:
            if "error" in r:
                table.add_row(f"{c['rows']}×{c['vocab']}", c["dtype"], r["variant"], "failed", "", "", "", "", "",
                              "", r["error"][:40])
                continue
            fmt = lambda x, f="{:.1f}": "-" if x is None else f.format(x)  # noqa: E731
            table.add_row(f"{c['rows']}×{c['vocab']}", c["dtype"], r["variant"], fmt(r["seconds"] * 1e3),
                          fmt(r.get("speedup_vs_eager"), "{:.2f}"), fmt(r["cpu_seconds"] * 1e3),
                          fmt(r.get("cpu_speedup_vs_eager"), "{:.2f}"), fmt(c["floor_ms"]), fmt(r["floor_ratio"], "{:.2f}"),
                          fmt(r["peak_extra_mb"]), fmt(r["beyond_grad_mb"]))
    console.print(table)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__, "device": device,
                    "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None},
        "backend": backend(dev.type), "copy_bandwidth_gbs": bw / 1e9, "temperature": T, "alpha": ALPHA,
        "repeats": repeats, "statistic": "best of interleaved repeats",
        "load_average": {"before": load_before, "after": _load()}, "cases": cases,
    }
    write_json(out_path, result)
    console.print(f"wrote {out_path}")
    return result
