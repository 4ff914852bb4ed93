"""Trainer throughput: the distillation loop with the fused KD kernel against the same loop with the
eager PyTorch loss (same teacher, student, data, steps). Prints a table and writes JSON.

    python benchmarks/trainer_bench.py [--steps 12] [--teacher builtin] [--seq-len 256] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def bench_one(impl: str, args, workdir: Path) -> dict:
    from edgekd.distill import DistillConfig, run

    out = workdir / impl
    run(DistillConfig(teacher=args.teacher, data=args.data, steps=args.steps, out=str(out), seq_len=args.seq_len,
                      batch_size=args.batch_size, loss_impl=impl, baselines="none", eval_blocks=8, quiet=True,
                      checkpoint_every=10 ** 9, threads=args.threads))
    rep = json.loads((out / "report.json").read_text())
    hist = json.loads(sorted((out / "checkpoints" / "distill").glob("step_*"))[-1].joinpath("trainer.json").read_text())["history"]
    warm = hist[args.warmup:]
    tokens = sum(h["tokens"] for h in warm)
    # tokens_per_s per step is cumulative; recover the timed span from the first and last records
    t_first = sum(h["tokens"] for h in hist[:args.warmup]) / hist[args.warmup - 1]["tokens_per_s"]
    t_last = sum(h["tokens"] for h in hist) / hist[-1]["tokens_per_s"]
    return {"impl": impl, "tokens_per_s": tokens / (t_last - t_first), "steps_timed": len(warm),
            "tokens_per_step": hist[-1]["tokens"], "final_loss": hist[-1]["loss"],
            "student_params": rep["student"]["params"], "teacher_params": rep["teacher"]["params"],
            "distill_seconds": rep["timings_s"].get("distill")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2, help="Untimed first steps.")
    ap.add_argument("--teacher", default="builtin")
    ap.add_argument("--data", default="builtin")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).with_name("trainer_bench.json")))
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    from edgekd import kernels

    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_one(impl, args, Path(tmp)) for impl in ("eager", "fused")]
    eager, fused = rows
    result = {"benchmark": "trainer", "backend": kernels.backend("cpu"), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
              "seq_len": args.seq_len, "batch_size": args.batch_size, "steps": args.steps, "rows": rows,
              "speedup": fused["tokens_per_s"] / eager["tokens_per_s"],
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    table = Table(title=f"Trainer tokens/s (distill step: teacher fwd + student fwd/bwd + KD loss), "
                        f"kernel backend {result['backend']}")
    for c in ("loss", "tokens/s", "tokens/step", "final loss"):
        table.add_column(c)
    for r in rows:
        table.add_row("fused kernel" if r["impl"] == "fused" else "eager PyTorch", f"{r['tokens_per_s']:,.0f}",
                      str(r["tokens_per_step"]), f"{r['final_loss']:.4f}")
    Console().print(table)
    print(f"speedup fused/eager: {result['speedup']:.2f}x")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
