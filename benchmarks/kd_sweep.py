"""What distillation buys over hard labels on the built-in default: a sweep of temperature, α and divergence.

Every variant trains the one-command job's student (the search's choice on android-arm64: 2 of the
teacher's 4 layers at full width, initialised from the teacher) with the job's data, steps, seed and
schedule; only the loss differs (and for GKD the scheme: half the steps on the student's own samples). `ce_only` is α = 0 (the same run on hard labels alone: the engine's
ce_only baseline, tests/distill/test_run.py shows the two agree). Reported per variant: held-out loss,
perplexity, top-1 agreement with the teacher, and the share of the ce_only -> teacher loss gap closed.

    .venv/bin/python benchmarks/kd_sweep.py [--teacher builtin] [--steps 150] [--json benchmarks/kd_sweep.json]

With `--own-tokenizer N` the student gets its own N-token BPE (trained on the built-in corpus) and the job's
student shape with that vocabulary, from random weights; the grid's divergence column then names the
cross-tokenizer loss (`uld`, `token_align`), and ce_only is the same student on hard labels:

    .venv/bin/python benchmarks/kd_sweep.py --own-tokenizer 2048 --only "ce_only,uld:1:0.7:uld,ta:1:0.7:token_align"

Prints a table and writes JSON (with the machine's load average beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

# (label, temperature, alpha, divergence[, {"loss": extra loss-term keys, "scheme": name, "scheme_config": {...}}])
GRID = [
    ("ce_only", 1.0, 0.0, "forward_kl"),
    ("fkl T=2 a=0.5", 2.0, 0.5, "forward_kl"),   # the default before this sweep
    ("fkl T=1 a=0.5", 1.0, 0.5, "forward_kl"),
    ("fkl T=1 a=0.9", 1.0, 0.9, "forward_kl"),
    ("fkl T=1 a=1", 1.0, 1.0, "forward_kl"),
    ("fkl T=2 a=1", 2.0, 1.0, "forward_kl"),
    ("rkl T=1 a=1", 1.0, 1.0, "reverse_kl"),
    ("jsd T=1 a=1", 1.0, 1.0, "jsd"),
    # issue 13: DistiLLM's skew divergences (λ 0.1) and GKD (half the steps on the student's samples, JSD β 0.5)
    ("skl T=1 a=0.7", 1.0, 0.7, "skew_kl", {"loss": {"skew": 0.1}}),
    ("srkl T=1 a=0.7", 1.0, 0.7, "skew_reverse_kl", {"loss": {"skew": 0.1}}),
    ("gkd jsd l=0.5 a=0.7", 1.0, 0.7, "jsd", {"loss": {"beta": 0.5}, "scheme": "on_policy",
                                                "scheme_config": {"lmbda": 0.5}}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="builtin")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--student", default='{"num_hidden_layers": 2}')
    ap.add_argument("--only", default=None, help="comma-separated labels of GRID to run")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (two sweeps side by side: 1 each)")
    ap.add_argument("--own-tokenizer", type=int, default=None, help="give the student its own BPE of N tokens")
    ap.add_argument("--json", default=str(Path(__file__).with_name("kd_sweep.json")))
    args = ap.parse_args()
    student = json.loads(args.student)
    if args.own_tokenizer:
        student = own_tokenizer_student(args.teacher, student, args.own_tokenizer,
                                        Path(tempfile.mkdtemp()) / "student")

    from edgekd.distill import DistillConfig, run

    grid = [g for g in GRID if args.only is None or g[0] in args.only.split(",")]
    grid += [(label, float(T), float(a), div) for label, T, a, div in
             (x.split(":") for x in (args.only or "").split(",") if x.count(":") == 3)]  # "label:T:alpha:divergence"
    rows = []
    for label, T, alpha, div, *extra in grid:
        extra = extra[0] if extra else {}
        t0 = time.time()
        with tempfile.TemporaryDirectory() as d:
            loss = [{"name": div}] if div in ("uld", "token_align") else \
                [{"name": "kd", "divergence": div, **extra.get("loss", {})}]
            if args.own_tokenizer and div not in ("uld", "token_align"):  # ce_only: alpha 0 of a cross loss
                loss = [{"name": "uld"}]
            cfg = DistillConfig(teacher=args.teacher, student=student, steps=args.steps,
                                temperature=T, alpha=alpha, loss=loss, scheme=extra.get("scheme", "offline"),
                                scheme_config=extra.get("scheme_config", {}),
                                out=str(Path(d) / "run"), baselines="none", quiet=True, eval_every=0,
                                threads=args.threads)
            rep = run(cfg).report
        s, t = rep["student"], rep["teacher"]
        rows.append({"label": label, "temperature": T, "alpha": alpha, "divergence": div, **extra,
                     "eval_loss": s["eval_loss"], "perplexity": s["perplexity"], "top1_agreement": s["top1_agreement"],
                     "teacher_eval_loss": t["eval_loss"], "params": s["params"], "seconds": time.time() - t0,
                     "load": os.getloadavg()[0]})
        print(f"{label:16s} loss {s['eval_loss']:.4f}  ({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})",
              flush=True)
    base = next((r for r in rows if r["label"] == "ce_only"), None)
    for r in rows:
        gap = base["eval_loss"] - r["teacher_eval_loss"] if base else math.nan
        r["gap_closed"] = (base["eval_loss"] - r["eval_loss"]) / gap if base and gap > 0 else None
    print(f"\nteacher held-out loss {rows[0]['teacher_eval_loss']:.4f}; student {rows[0]['params']:,} params, "
          f"{args.steps} steps\n")
    print("| variant | T | α | divergence | held-out loss | perplexity | top-1 agreement | gap closed |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        gc = "—" if r["gap_closed"] is None else f"{r['gap_closed']:.0%}"
        agree = "—" if r["top1_agreement"] is None else f"{r['top1_agreement']:.3f}"
        print(f"| {r['label']} | {r['temperature']:g} | {r['alpha']:g} | {r['divergence']} | {r['eval_loss']:.4f} | "
              f"{r['perplexity']:.2f} | {agree} | {gc} |")
    out = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(), "steps": args.steps,
           "teacher": args.teacher, "student": str(student) if args.own_tokenizer else student,
           "own_tokenizer": args.own_tokenizer, "rows": rows,
           "uptime_load": os.getloadavg()}
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


def own_tokenizer_student(teacher: str, shape: dict, vocab: int, out: Path) -> str:
    """A student directory: the teacher's config with `shape` over it and an own `vocab`-token BPE."""
    from edgekd.data.corpus import _is_validation, builtin_files
    from edgekd.data.tokenizer import train_tokenizer
    from edgekd.models.loading import read_config_dict, resolve_model_dir
    from transformers import AutoConfig

    tok = train_tokenizer([p.read_text(encoding="utf-8", errors="replace") for k, p in builtin_files()
                           if not _is_validation(k)], vocab_size=vocab)
    cfg = AutoConfig.for_model(**(read_config_dict(resolve_model_dir(teacher)) | shape | {
        "vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "bos_token_id": tok.eos_token_id,
        "eos_token_id": tok.eos_token_id}))
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


if __name__ == "__main__":
    main()
