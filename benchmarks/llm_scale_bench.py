"""KD at LLM vocabulary: the head-and-loss part of a training step, four ways, in one interleaved run.

    python benchmarks/llm_scale_bench.py [--sizes 512x32000,1024x128256] [--tokens 512] [--repeats 3]

What is timed, for each variant: the student's LM head over its final hidden states (leaves standing
for the student body's output), the teacher's head over its final hidden states (teacher hidden =
2 × student hidden), the KD loss (forward KL, T = 1, α = 0.7: edgekd's default) with CE, and the
backward into the student's hidden states and head. The bodies are the same for every variant and
are left out: at vocabulary 32k-128k this part is what the variants differ in and what bounds a
step. Variants:

- eager: both heads with F.linear, then edgekd's eager KD formula (log_softmax, kl_div, cross_entropy);
- torch.compile: the same function compiled (inductor);
- liger: Liger-Kernel's chunked `LigerFusedLinearJSDLoss` (β = 0 is forward KL; pure PyTorch, so it
  runs on CPU; installed for this benchmark only, into benchmarks/.deps, never an edgekd dependency);
- fused: `edgekd.kernels.fused_linear_kd_loss` (what edgekd's trainer runs by default for causal LMs).

The floor is the four head matmuls alone (student and teacher forward, the two gradient products) into
pre-allocated outputs, timed in the same rounds. The logits-level rows are `edgekd kernel bench`'s
(eager and fused `kd_loss` over 2048 rows) and its memory floor. Prints a table and the goals
(issue 12), writes JSON; records the machine and the load average.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from edgekd.io import write_json
from edgekd.kernels import eager_kd_loss, fused_linear_kd_loss
from edgekd.kernels import bench as kb

T, ALPHA = 1.0, 0.7
DEPS = Path(__file__).resolve().parent / ".deps"
LIGER = "liger-kernel==0.8.5"


def import_liger():
    """Liger-Kernel's chunked losses from benchmarks/.deps (installed there with --no-deps when missing)."""
    if not (DEPS / "liger_kernel").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(DEPS), LIGER],
                       check=True)
    sys.path.insert(0, str(DEPS))
    return importlib.import_module("liger_kernel.chunked_loss").LigerFusedLinearJSDLoss


def eager_step(hs, ws, ht, wt, labels):
    s = F.linear(hs, ws)
    t = F.linear(ht, wt)
    return eager_kd_loss(s, t, labels, temperature=T, alpha=ALPHA, dtype=None)


def case(tokens: int, hidden: int, vocab: int, repeats: int, use_compile: bool, liger_cls):
    g = torch.Generator().manual_seed(0)
    ht_dim = 2 * hidden
    hs = torch.randn(tokens, hidden, generator=g).requires_grad_(True)
    ws = (torch.randn(vocab, hidden, generator=g) / hidden ** 0.5).requires_grad_(True)
    ht = torch.randn(tokens, ht_dim, generator=g)
    wt = torch.randn(vocab, ht_dim, generator=g) / ht_dim ** 0.5
    labels = torch.randint(0, vocab, (tokens,), generator=g)

    def runner(loss_fn):
        def step():
            loss = loss_fn(hs, ws, ht, wt, labels)
            loss.backward()
            hs.grad = ws.grad = None
            return loss.detach()
        return step

    steps = {"eager": runner(eager_step)}
    if use_compile:
        steps["torch.compile"] = runner(torch.compile(eager_step, dynamic=False))
    if liger_cls is not None:
        liger = liger_cls(weight_hard_loss=1 - ALPHA, weight_soft_loss=ALPHA, beta=0.0, temperature=T)
        steps["liger"] = runner(lambda h, w, th, tw, y: liger(h, w, th, tw, y))
    steps["fused"] = runner(lambda h, w, th, tw, y: fused_linear_kd_loss(h, w, th, tw, y, temperature=T,
                                                                         alpha=ALPHA))
    # the floor: the same four matmuls, into buffers allocated (and faulted in) once
    s_out, t_out = torch.empty(tokens, vocab), torch.empty(tokens, vocab)
    gh_out, gw_out = torch.empty(tokens, hidden), torch.empty(vocab, hidden)
    hsd, wsd = hs.detach(), ws.detach()

    def floor():
        torch.mm(hsd, wsd.t(), out=s_out)
        torch.mm(ht, wt.t(), out=t_out)
        torch.mm(s_out, wsd, out=gh_out)
        torch.mm(s_out.t(), hsd, out=gw_out)
        return 0.0
    steps["matmul floor"] = floor
    timed = kb.interleaved(steps, repeats, torch.device("cpu"))
    flops = 2 * tokens * vocab * (3 * hidden + ht_dim)
    fl = timed["matmul floor"]
    rows = []
    for name, r in timed.items():
        if "error" not in r:
            r["tokens_per_s"] = tokens / r["seconds"]
            r["peak_extra_mb"] = None if r.get("extra_bytes") is None else r.pop("extra_bytes") / 2**20
            r["x_floor"] = r["seconds"] / fl["seconds"]
        rows.append(r)
    return {"tokens": tokens, "hidden": hidden, "teacher_hidden": ht_dim, "vocab": vocab,
            "gemm_gflops": flops / fl["seconds"] / 1e9, "logits_mb": tokens * vocab * 4 / 2**20, "results": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512x32000,1024x128256", help="student hidden x vocabulary, comma-separated")
    ap.add_argument("--tokens", type=int, default=512, help="tokens per step (one sequence of 512)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-liger", action="store_true")
    ap.add_argument("--kernel-rows", type=int, default=2048, help="rows of the logits-level comparison (0: skip)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "llm_scale_bench.json"))
    a = ap.parse_args()
    from rich.table import Table

    from edgekd.console import out as console_out

    console = console_out()
    liger_cls = None if a.no_liger else import_liger()
    load_before = kb._load()
    cases = []
    for size in a.sizes.split(","):
        hidden, vocab = (int(x) for x in size.lower().split("x"))
        console.print(f"  measuring hidden {hidden}, vocab {vocab}, {a.tokens} tokens ...")
        cases.append(case(a.tokens, hidden, vocab, a.repeats, not a.no_compile, liger_cls))
    kernel = None
    if a.kernel_rows:
        bw = kb.copy_bandwidth(torch.device("cpu"))
        console.print(f"  measuring kd_loss over {a.kernel_rows} × 32000 logits ...")
        kernel = kb.bench_case(a.kernel_rows, 32000, torch.float32, torch.device("cpu"), max(a.repeats, 5),
                               False, bw) | {"copy_bandwidth_gbs": bw / 1e9}
    load_after = kb._load()

    table = Table(title=f"KD head+loss step, fwd+bwd, float32, {torch.get_num_threads()} threads, best of "
                        f"{a.repeats} interleaved (load {load_before} → {load_after})")
    for col in ("hidden × vocab", "variant", "ms", "tokens/s", "× fused speed", "× matmul floor", "extra MB", "loss"):
        table.add_column(col, justify="right")
    goals = []
    for c in cases:
        by = {r["variant"]: r for r in c["results"]}
        fused = by["fused"]
        for r in c["results"]:
            if "error" in r:
                table.add_row(f"{c['hidden']}×{c['vocab']}", r["variant"], "failed", "", "", "", "", r["error"][:40])
                continue
            table.add_row(f"{c['hidden']}×{c['vocab']}", r["variant"], f"{r['seconds'] * 1e3:.0f}",
                          f"{r['tokens_per_s']:.0f}", f"{fused['seconds'] / r['seconds']:.2f}", f"{r['x_floor']:.2f}",
                          "-" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.0f}", f"{r['loss']:.4f}")
        size = f"{c['hidden']}×{c['vocab']}"
        goals.append((f"{size}: fused within 1.2× of the matmul floor", f"{fused['x_floor']:.2f}×",
                      fused["x_floor"] <= 1.2))
        lg = by.get("liger")
        if lg and "error" not in lg:
            goals.append((f"{size}: fused tokens/s ≥ Liger's", f"{fused['tokens_per_s'] / lg['tokens_per_s']:.2f}×",
                          fused["tokens_per_s"] >= lg["tokens_per_s"]))
            goals.append((f"{size}: fused peak memory ≤ Liger's",
                          f"{fused['peak_extra_mb']:.0f} / {lg['peak_extra_mb']:.0f} MB",
                          fused["peak_extra_mb"] <= lg["peak_extra_mb"]))
    if kernel:
        kby = {r["variant"]: r for r in kernel["results"]}
        kf = kby["fused"]
        goals.append((f"kd_loss {a.kernel_rows}×32000: fused ≥ 15× eager", f"{kf['speedup_vs_eager']:.1f}×",
                      kf["speedup_vs_eager"] >= 15))
        goals.append((f"kd_loss {a.kernel_rows}×32000: fused within 2× of the memory floor",
                      f"{kf['floor_ratio']:.2f}× ({kf['seconds'] * 1e3:.0f} / {kernel['floor_ms']:.0f} ms)",
                      kf["floor_ratio"] <= 2))
    console.print(table)
    gt = Table(title="Goals (issue 12)")
    for col in ("goal", "measured", "met"):
        gt.add_column(col)
    for name, value, met in goals:
        gt.add_row(name, value, "yes" if met else "no")
    console.print(gt)
    for c in cases:
        console.print(f"  GEMM throughput in the floor rows: {c['hidden']}×{c['vocab']}: {c['gemm_gflops']:.0f} GFLOP/s")
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "load_average": {"before": load_before, "after": load_after}, "statistic": "best of interleaved repeats",
        "temperature": T, "alpha": ALPHA, "repeats": a.repeats, "liger": None if a.no_liger else LIGER,
        "cases": cases, "kernel": kernel,
        "goals": [{"goal": n, "measured": v, "met": m} for n, v, m in goals],
    }
    write_json(Path(a.out), result)
    console.print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
