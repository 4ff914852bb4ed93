"""What distillation buys on the built-in digits: teacher / KD / ce_only / scratch accuracy over (T, α) and seeds.

Every run is the engine alone (`edgekd.distill.run`, what `edgekd distill --teacher builtin-cnn` trains) on the
built-in CNN teacher and scikit-learn's digits, with the image defaults (batch 32, lr 1e-2) and the given steps;
only the student, the temperature, α and the seed differ. The baselines (ce_only: the same student from the same
teacher-initialised start on hard labels; scratch: a random start) do not depend on T and α, so they are trained
once per (student, seed). Accuracy and macro-F1 are PyTorch float on the 359 held-out images.

    .venv/bin/python benchmarks/digits_sweep.py [--steps 400] [--seeds 0,1,2] [--json benchmarks/digits_sweep.json]

Prints a table (means over seeds, and KD - ce_only per seed) and writes JSON with the machine and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from edgekd.targets.hostbench import cpu_model_name

STUDENTS = {  # the job's searched student on raspberry-pi-4 (0.75 of the channels) and a small one
    "searched 12/24/48": {"model_type": "cnn", "hidden_sizes": [12, 24, 48]},
    "small 4/8/16": {"model_type": "cnn", "hidden_sizes": [4, 8, 16]},
}
GRID = [(1.0, 0.7), (2.0, 0.7), (4.0, 0.7), (4.0, 0.9)]



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", default=str(Path(__file__).with_name("digits_sweep.json")))
    args = ap.parse_args()
    from edgekd.distill import DistillConfig, run

    seeds = [int(s) for s in args.seeds.split(",")]
    rows, t0 = [], time.time()
    for name, student in STUDENTS.items():
        for seed in seeds:
            for i, (temp, alpha) in enumerate(GRID):
                with tempfile.TemporaryDirectory() as d:
                    rep = run(DistillConfig(teacher="builtin-cnn", data="builtin-digits", student=dict(student),
                                            steps=args.steps, temperature=temp, alpha=alpha, seed=seed, out=d,
                                            quiet=True, baselines="ce_only,scratch" if i == 0 else "none")).report
                row = {"student": name, "params": rep["student"]["params"], "seed": seed, "T": temp, "alpha": alpha,
                       "teacher": rep["teacher"]["accuracy"], "kd": rep["student"]["accuracy"],
                       "kd_f1": rep["student"]["macro_f1"]}
                if i == 0:
                    row |= {"ce_only": rep["ce_only"]["accuracy"], "ce_only_f1": rep["ce_only"]["macro_f1"],
                            "scratch": rep["scratch"]["accuracy"], "scratch_f1": rep["scratch"]["macro_f1"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    base = {(r["student"], r["seed"]): r for r in rows if "ce_only" in r}
    print(f"\n{'student':18} {'T':>4} {'α':>4} {'KD acc':>7} {'KD F1':>7} {'ce_only':>8} {'scratch':>8}  KD - ce_only per seed")
    summary = []
    for name in STUDENTS:
        for temp, alpha in GRID:
            rs = [r for r in rows if r["student"] == name and (r["T"], r["alpha"]) == (temp, alpha)]
            bs = [base[(name, r["seed"])] for r in rs]
            s = {"student": name, "T": temp, "alpha": alpha, "kd": statistics.mean(r["kd"] for r in rs),
                 "kd_f1": statistics.mean(r["kd_f1"] for r in rs), "ce_only": statistics.mean(b["ce_only"] for b in bs),
                 "scratch": statistics.mean(b["scratch"] for b in bs),
                 "kd_minus_ce_only": [round(r["kd"] - b["ce_only"], 4) for r, b in zip(rs, bs)]}
            summary.append(s)
            print(f"{name:18} {temp:4g} {alpha:4g} {s['kd']:7.3f} {s['kd_f1']:7.3f} {s['ce_only']:8.3f} "
                  f"{s['scratch']:8.3f}  {' '.join(f'{x:+.3f}' for x in s['kd_minus_ce_only'])}")
    out = {"machine": {"cpu": cpu_model_name(), "cores": os.cpu_count(), "load_average": os.getloadavg()},
           "steps": args.steps, "seeds": seeds, "wall_s": round(time.time() - t0, 1), "runs": rows, "summary": summary}
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.json} ({out['wall_s']} s; load average {out['machine']['load_average']})")


if __name__ == "__main__":
    main()
