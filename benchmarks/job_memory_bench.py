"""Memory and disk of the whole job against the teacher's size: the peak resident memory of the job's
whole process tree (the export builders and runtimes are children), overall and phase by phase, in bytes
per teacher parameter; the run directory; wall time.

    python benchmarks/job_memory_bench.py [--teachers 5M,27M,82M] [--targets raspberry-pi-5] [--steps 2]
                                          [--out benchmarks/job_memory_bench.json]

Teachers: random-weight stand-ins built here, either toy Qwen2 shapes at the built-in tokenizer's 4096
tokens (5M, 27M, 82M, 279M) or the published shapes with their real vocabularies (qwen2.5-0.5b,
llama3.2-1b, qwen2.5-1.5b; edgekd.models.published). Each job is `edgekd distill --target T --teacher DIR
--steps N --quiet` in a fresh process; a sampler sums VmRSS over the job's process tree every 0.2 s, and
the phases' start and end times (the job's own record, checkpoints/*timings.json `spans`) split the
samples by phase. /usr/bin/time -v's maximum (the largest single process) is kept beside it. Wall times
are only meaningful on an idle machine; memory does not depend on load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
# name -> (hidden, layers, heads, kv heads, ffn): toy Qwen2 shapes at the built-in tokenizer's 4096 tokens
TOY = {"5M": (256, 4, 4, 2, 688), "27M": (512, 8, 8, 4, 1376), "82M": (768, 12, 12, 4, 2048),
       "279M": (1280, 14, 20, 4, 3456)}
# the phases a table shows, in the job's order (engine phases inside "distill+scratch+eval")
PHASES = ("search", "distill", "qad-litert-lm-int4", "qad-onnx-genai-int4", "scratch", "ce_only", "eval",
          "export+parity+local_profile")


def make_teacher(name: str, where: Path) -> tuple[Path, int]:
    """A random-weight teacher of the toy or published shape `name`; (dir, params)."""
    from edgekd.models.published import PUBLISHED, random_teacher

    out = where / name
    if name in PUBLISHED:
        return out, random_teacher(name, out)
    h, L, nh, nkv, f = TOY[name]
    return out, random_teacher(dict(model_type="qwen2", vocab_size=4096, hidden_size=h, num_hidden_layers=L,
                                    num_attention_heads=nh, num_key_value_heads=nkv, intermediate_size=f,
                                    max_position_embeddings=512, tie_word_embeddings=False), out)


def tree_rss_kb(root: int) -> int:
    """VmRSS summed over `root` and all its descendants (kB)."""
    parent, rss = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            text = Path(f"/proc/{d}/status").read_text()
        except OSError:
            continue
        pp = re.search(r"^PPid:\s+(\d+)", text, re.M)
        r = re.search(r"^VmRSS:\s+(\d+)", text, re.M)
        parent[int(d)] = int(pp.group(1)) if pp else 0
        rss[int(d)] = int(r.group(1)) if r else 0
    total, todo = 0, [root]
    children: dict[int, list[int]] = {}
    for p, pp in parent.items():
        children.setdefault(pp, []).append(p)
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def run_job(teacher: Path, run: Path, steps: int, target: str, extra: tuple = ()) -> dict:
    cmd = ["/usr/bin/time", "-v", str(ROOT / ".venv" / "bin" / "edgekd"), "distill", "--target", target,
           "--teacher", str(teacher), "--steps", str(steps), "--out", str(run), "--quiet", *extra]
    samples: list[tuple[float, int]] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        while proc.poll() is None:
            samples.append((time.time(), tree_rss_kb(proc.pid)))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    t.join()
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", err).group(1)
    lines = [ln for ln in err.splitlines() if ln.startswith("edgekd: error")]
    return {"exit": proc.returncode, "largest_process_mb": rss_kb / 1024,
            "peak_tree_mb": max((s for _, s in samples), default=0) / 1024, "wall": wall.strip(),
            "error": lines[0] if lines else None, "samples": samples}


def phase_peaks(run: Path, samples: list) -> dict:
    """Per phase: the peak of the tree's resident memory within its spans (MB) and its wall seconds."""
    out = {}
    for f in (run / "checkpoints" / "job_timings.json", run / "checkpoints" / "timings.json"):
        if not f.is_file():
            continue
        rec = json.loads(f.read_text())
        for name, start, end in rec.get("spans", []):
            inside = [s for t, s in samples if start <= t <= end]
            p = out.setdefault(name, {"peak_tree_mb": 0.0, "wall_s": 0.0})
            p["peak_tree_mb"] = max(p["peak_tree_mb"], max(inside, default=0) / 1024)
            p["wall_s"] = round(p["wall_s"] + end - start, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", default="5M,27M,82M")
    ap.add_argument("--targets", default="raspberry-pi-5")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "job_memory_bench.json"))
    ap.add_argument("--keep", help="keep the teachers and runs in this folder (default: a temporary one)")
    ap.add_argument("--job-args", default="", help='more options for each job, e.g. "--baselines none"')
    args = ap.parse_args()
    rows = []
    machine = {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
               "mem_total_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
               "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="edgekd-membench-") as tmp:
        where = Path(args.keep or tmp)
        for name in args.teachers.split(","):
            teacher, params = make_teacher(name, where / "teachers")
            for target in args.targets.split(","):
                run = where / f"run-{name}-{target}"
                res = run_job(teacher, run, args.steps, target, tuple(args.job_args.split()))
                rep = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
                ph = phase_peaks(run, res.pop("samples"))
                student = rep.get("student", {})
                rows.append({"teacher": name, "teacher_params": params, "target": target,
                             "student_params": student.get("params"), "precision": rep.get("precision"),
                             **res, "bytes_per_teacher_param": res["peak_tree_mb"] * 2**20 / params,
                             "phases": {k: v | {"bytes_per_teacher_param": v["peak_tree_mb"] * 2**20 / params}
                                        for k, v in ph.items()},
                             "disk_mb": rep.get("disk_mb")})
                Path(args.out).write_text(json.dumps({"machine": machine, "steps": args.steps, "job_args": args.job_args, "rows": rows},
                                                     indent=1))
    machine["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps({"machine": machine, "steps": args.steps, "job_args": args.job_args, "rows": rows}, indent=1))
    tab = Table(title=f"the job's memory and disk (--steps {args.steps}; {machine['cpu']}, {machine['cores']} cores)")
    for c in ("teacher", "target", "student", "exit", "peak (all processes) GB", "B / teacher param",
              "B / teacher param by phase", "run dir GB", "wall"):
        tab.add_column(c, justify="right")
    for r in rows:
        by = ", ".join(f"{k} {r['phases'][k]['bytes_per_teacher_param']:.1f}" for k in PHASES if k in r["phases"])
        tab.add_row(f"{r['teacher']} ({r['teacher_params'] / 1e6:.0f}M)", r["target"],
                    f"{(r['student_params'] or 0) / 1e6:.0f}M {r['precision'] or ''}", str(r["exit"]),
                    f"{r['peak_tree_mb'] / 1024:.1f}", f"{r['bytes_per_teacher_param']:.1f}", by,
                    f"{(r['disk_mb'] or {}).get('run', 0) / 1024:.2f}", r["wall"])
    Console().print(tab)


def _cpu() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
