"""What quantisation-aware distillation buys, measured through the files: for each teacher, the job run twice
in fresh processes (QAD, the default; and --no-quant-aware, post-training quantisation only), and per
quantised export the held-out loss of the float, ptq and qad files in their runtime on the same tokens, the
prompts each file continues exactly as its PyTorch model, and each job's wall time.

    python benchmarks/qad_bench.py [--teachers builtin,27M] [--target android-arm64] [--steps 150]
                                   [--out benchmarks/qad_bench.json] [--keep DIR]

Teachers: `builtin` (the README's default: the built-in teacher, its demo budget) or a random-weight toy
Qwen2 shape of benchmarks/job_memory_bench.py (5M, 27M, 82M), for which a decode budget is chosen between
the largest candidate's int8 and int4 predictions, so that the search ships it in int4. Wall times are
only meaningful on an idle machine (the table records the load average); losses and prompts do not depend
on load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def int4_budget(teacher: Path, target: str) -> float:
    """A decode budget (tok/s) the teacher's largest candidate meets in int4 but not in int8."""
    from edgekd.models.loading import read_config_dict
    from edgekd.search import search_student
    from edgekd.targets import get_cost_model

    res = search_student(read_config_dict(teacher), target, {"decode_tok_s": 1e-3, "ttft_ms": 1e6},
                         cost_model=get_cost_model("generation"))
    top = max(res.table, key=lambda r: (r["params"], r["precision"] == "int4"))
    same = {r["precision"]: r["decode_tok_s"] for r in res.table
            if all(r[k] == top[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size"))}
    return (same["int4"] + same["int8"]) / 2


def run_job(teacher: str, target: str, steps: int, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "edgekd.cli", "distill", "--target", target, "--steps", str(steps), "--out", str(out),
           "--quiet", *(["--teacher", teacher] if teacher != "builtin" else []), *extra]
    start = time.perf_counter()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    rep = json.loads((out / "report.json").read_text())
    if rc.returncode != 0:
        print(f"{' '.join(cmd)}: exit {rc.returncode}: {rc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    return {"wall_s": wall, "exit": rc.returncode, "status": rep.get("status"), "report": rep}


def rows(teacher: str, qad: dict, ptq_only: dict) -> list[dict]:
    """One row per quantised export: the QAD job's float / ptq / qad files, and the --no-quant-aware job's."""
    rep = qad["report"]
    out = []
    for key, r in ((rep.get("distillation") or {}).get("quant_aware") or {}).get("by_export", {}).items():
        plain = {} if ptq_only is qad else ptq_only["report"]["exports"].get(key, {})
        out.append({"teacher": teacher, "teacher_params": rep["teacher"]["params"], "student_params": rep["student"]["params"],
                    "export": key, "recipe": r["recipe_name"], "qad_steps": r["steps"],
                    "float": r["float"]["eval_loss"], "ptq": r["ptq"]["eval_loss"], "qad": r["qad"]["eval_loss"],
                    "qad_saved": r["qad_saved"], "gap_closed": r["gap_closed"],
                    "prompts": r["prompts"], "ptq_prompts_vs_float": r["ptq"]["prompts_matched"],
                    "qad_prompts_vs_its_student": r["qad"]["prompts_matched"],
                    "qad_prompts_vs_float": r["qad_vs_float_student"],
                    "no_qad_job_file": {"eval_loss": plain.get("eval_loss"), "prompts_matched": plain.get("prompts_matched"),
                                        "passed": plain.get("passed")},
                    "pytorch_before_qad": r["pytorch_before_qad"], "pytorch_after_qad": r["pytorch"]["eval_loss"],
                    "measured_in": r["measured_in"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", default="builtin")
    ap.add_argument("--target", default="android-arm64")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "qad_bench.json"))
    ap.add_argument("--keep", default=None, help="keep the run directories here")
    ap.add_argument("--job-args", default="", help="more options for every job (e.g. '--baselines none')")
    ap.add_argument("--qad-only", action="store_true", help="skip the --no-quant-aware job (its ptq file is in "
                                                              "the QAD job's report too)")
    args = ap.parse_args()
    from job_memory_bench import make_teacher

    console = Console()
    where = Path(args.keep or tempfile.mkdtemp(prefix="qad-bench-"))
    where.mkdir(parents=True, exist_ok=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    result = {"machine": {"cpu": cpu, "cores": os.cpu_count(), "load_before": os.getloadavg()},
              "target": args.target, "steps": args.steps, "teachers": {}, "rows": []}
    for name in args.teachers.split(","):
        teacher, extra = "builtin", []
        if name != "builtin":
            path, _ = make_teacher(name, where / "teachers")
            teacher, extra = str(path), ["--decode-tok-s", f"{int4_budget(path, args.target):.1f}"]
        extra += args.job_args.split()
        qad = run_job(teacher, args.target, args.steps, where / f"{name}-qad", extra)
        ptq = qad if args.qad_only else run_job(teacher, args.target, args.steps, where / f"{name}-no-qad",
                                                extra + ["--no-quant-aware"])
        result["teachers"][name] = {
            v: {"wall_s": j["wall_s"], "exit": j["exit"], "status": j["status"],
                "phases_s": {k: p["wall_s"] for k, p in j["report"]["timings_s"].get("job", {}).items()
                             if isinstance(p, dict)},
                "engine_phases_s": {k: v2 for k, v2 in j["report"]["timings_s"].items() if isinstance(v2, (int, float))}}
            for v, j in (("qad", qad), ("no_qad", ptq)) if v == "qad" or not args.qad_only}
        result["rows"] += rows(name, qad, ptq)
    result["machine"]["load_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=1))
    t = Table(title=f"QAD vs PTQ through the files ({args.target}, --steps {args.steps}; {cpu})")
    for c in ("teacher", "export", "recipe", "float", "ptq", "qad", "gap closed", "prompts ptq / qad", "job s qad / ptq"):
        t.add_column(c)
    for r in result["rows"]:
        w = result["teachers"][r["teacher"]]
        closed = "—" if r["gap_closed"] is None else f"{r['gap_closed']:.0%}"
        t.add_row(r["teacher"], r["export"], r["recipe"], f"{r['float']:.4f}", f"{r['ptq']:.4f}", f"{r['qad']:.4f}",
                  closed, f"{r['ptq_prompts_vs_float']}/{r['prompts']} / {r['qad_prompts_vs_its_student']}/{r['prompts']}",
                  f"{w['qad']['wall_s']:.0f} / {w['no_qad']['wall_s']:.0f}" if "no_qad" in w else f"{w['qad']['wall_s']:.0f} / —")
    console.print(t)
    console.print(f"load average before {result['machine']['load_before']}, after {result['machine']['load_after']}; "
                  f"written {args.out}")


if __name__ == "__main__":
    main()
