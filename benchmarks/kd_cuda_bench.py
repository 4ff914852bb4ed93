"""Fused CUDA KD kernel vs eager PyTorch on one GPU: forward+backward time, peak memory, HBM floor.

    python benchmarks/kd_cuda_bench.py [--sizes 2048x32000,2048x128256] [--dtypes float32,bfloat16]
                                       [--repeats 50] [--sweep-blocks] [--json PATH]

For each (rows x vocab, dtype) it times, with CUDA events (median of --repeats after warm-up):
  eager  edgekd.kernels.eager_kd_loss (log-softmaxes, KL, cross-entropy) and its backward, in the
         inputs' dtype;
  fused  edgekd.kernels.kd_loss (the fused CUDA kernel writes the gradient in its forward call;
         backward with the default upstream gradient costs nothing more).
The memory floor is one read of both inputs and one write of the gradient at the device-to-device
copy bandwidth measured in the same run (a copy reads and writes: 2 x bytes / time). The table gives
each time's ratio to that floor; the goal on an H100/H200 is fused <= 1.3x. --sweep-blocks also
times the fused kernel under EDGEKD_CUDA_BLOCKS_PER_SM = 1, 2, 3, 4 (the grid-size knob of
csrc/cuda/kd_cuda.cu). Needs a CUDA device; exits with a message otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KW = dict(temperature=2.0, alpha=0.5, divergence="forward_kl")


def eager_step(s, t, lab, temperature, alpha):
    """What one writes without the kernel (edgekd.kernels.eager_kd_loss), in the inputs' dtype."""
    from edgekd import kernels
    return kernels.eager_kd_loss(s, t, lab, temperature=temperature, alpha=alpha, dtype=None)


def fused_step(s, t, lab, temperature, alpha):
    from edgekd import kernels
    return kernels.kd_loss(s, t, lab, temperature=temperature, alpha=alpha, divergence="forward_kl")


def time_cuda(fn, repeats, warmup=5):
    """Median milliseconds of fn() between CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_bandwidth(nbytes=1 << 30, repeats=20):
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_cuda(lambda: dst.copy_(src), repeats)
    del src, dst
    return 2 * nbytes / (ms * 1e-3)


def fwd_bwd(step, s, t, lab):
    def go():
        x = s.detach().requires_grad_(True)
        loss = step(x, t, lab, KW["temperature"], KW["alpha"])
        loss.backward()
        return x.grad
    return go


def peak_mb(fn, base_bytes):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base_bytes) / 2**20


def _methods(sweep_blocks: bool, no_eager: bool) -> list:
    """(name, environment for the fused kernel, or None for eager)."""
    methods = [("fused", {})]
    if sweep_blocks:
        methods += [(f"fused bps={k}", {"EDGEKD_CUDA_BLOCKS_PER_SM": str(k)}) for k in (1, 2, 3, 4)]
    if not no_eager:
        methods.append(("eager", None))
    return methods


def _time_method(env, s, t, lab, repeats, base):
    """(ms, peak MB) of one method; NaN for both when it runs out of memory."""
    if env is None:
        fn = fwd_bwd(eager_step, s, t, lab)
    else:
        old = os.environ.pop("EDGEKD_CUDA_BLOCKS_PER_SM", None)
        os.environ.update(env)
        fn = fwd_bwd(fused_step, s, t, lab)
    try:
        return time_cuda(fn, repeats), peak_mb(fn, base)
    except torch.OutOfMemoryError:
        return float("nan"), float("nan")
    finally:
        if env is not None:
            os.environ.pop("EDGEKD_CUDA_BLOCKS_PER_SM", None)
            if old is not None:
                os.environ["EDGEKD_CUDA_BLOCKS_PER_SM"] = old


def bench_case(rows, V, dname, methods, repeats, bw) -> list[dict]:
    """Every method on one (rows x V, dtype), printed against the HBM floor."""
    dtype = DTYPES[dname]
    g = torch.Generator(device="cuda").manual_seed(0)
    s = torch.randn(rows, V, device="cuda", generator=g).to(dtype)
    t = torch.randn(rows, V, device="cuda", generator=g).to(dtype)
    lab = torch.randint(0, V, (rows,), device="cuda", generator=g)
    esz = s.element_size()
    floor_bytes = rows * V * (2 * esz + esz)  # read s and t, write the gradient
    floor_ms = floor_bytes / bw * 1e3
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    eager_ms = None
    rows_out = []
    for name, env in methods:
        ms, mb = _time_method(env, s, t, lab, repeats, base)
        if env is None:
            eager_ms = ms
        rows_out.append(dict(rows=rows, vocab=V, dtype=dname, method=name, ms=ms,
                             ratio_to_floor=ms / floor_ms, peak_mb=mb, floor_ms=floor_ms))
    for r in rows_out:
        r["speedup_vs_eager"] = (eager_ms / r["ms"]) if eager_ms else None
        sp = f"{r['speedup_vs_eager']:.2f}" if r["speedup_vs_eager"] else "-"
        print(f"{rows:>6} x {V:<6} {dname:>9} {r['method']:>16} {r['ms']:>9.3f} "
              f"{r['ratio_to_floor']:>8.2f} {r['peak_mb']:>9.1f} {sp:>8}")
    print(f"{'':>14} {'':>9} {'HBM floor':>16} {floor_ms:>9.3f} {1.0:>8.2f}")
    del s, t, lab
    torch.cuda.empty_cache()
    return rows_out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2048x32000,2048x128256")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--sweep-blocks", action="store_true")
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--json", default="benchmarks/results/kd_cuda_bench.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("kd_cuda_bench: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    from edgekd import kernels
    if kernels.backend("cuda") != "fused-cuda":
        print("kd_cuda_bench: the extension was built without its CUDA kernels (backend('cuda') is "
              f"{kernels.backend('cuda')!r}); rebuild with nvcc on PATH", file=sys.stderr)
        return 2

    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.cuda.get_device_properties(0)
    bw = copy_bandwidth()
    print(f"device: {dev.name} ({dev.multi_processor_count} SMs, {dev.total_memory / 2**30:.0f} GiB), "
          f"torch {torch.__version__}, copy bandwidth {bw / 1e9:.0f} GB/s")
    header = f"{'rows x V':>14} {'dtype':>9} {'method':>16} {'ms':>9} {'x floor':>8} {'peak MB':>9} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    methods = _methods(args.sweep_blocks, args.no_eager)
    results = []
    for size in args.sizes.split(","):
        rows, V = (int(x) for x in size.lower().split("x"))
        for dname in args.dtypes.split(","):
            results += bench_case(rows, V, dname, methods, args.repeats, bw)

    out = dict(machine=dict(gpu=dev.name, sms=dev.multi_processor_count, memory_gib=dev.total_memory / 2**30,
                            host=platform.node(), torch=torch.__version__, cuda=torch.version.cuda),
               copy_bandwidth_gbs=bw / 1e9, settings=KW, repeats=args.repeats,
               timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), results=results)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
