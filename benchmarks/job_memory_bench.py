"""Memory and disk of the whole job against the teacher's size: peak RSS per phase (bytes per teacher
parameter), the run directory, and wall time, for random-init Qwen2 (GQA) teachers on the built-in data.

    python benchmarks/job_memory_bench.py [--sizes 5M,27M,82M] [--steps 4] [--target raspberry-pi-5]
                                          [--out benchmarks/job_memory_bench.json]

Each job is `edgekd distill --target TARGET --teacher DIR --steps N --quiet` in a fresh process under
`/usr/bin/time -v` (its maximum resident set: the largest single process of the tree). Per phase, the
job's own record (checkpoints/job_timings.json, timings.json) holds the main process's peak so far at
the phase's end and the largest finished child's (the export builders). The target's default budget
keeps the largest student below the teacher: the worst case for memory. Wall times are only meaningful
on an idle machine; the memory numbers do not depend on load.
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
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
# name -> (hidden, layers, heads, kv heads, ffn): Qwen2 shapes at the built-in tokenizer's 4096 tokens
SHAPES = {"5M": (256, 4, 4, 2, 688), "27M": (512, 8, 8, 4, 1376), "82M": (768, 12, 12, 4, 2048),
          "279M": (1280, 14, 20, 4, 3456)}


def make_teacher(name: str, where: Path) -> tuple[Path, int]:
    """A random-init Qwen2 teacher of SHAPES[name] with the built-in teacher's tokenizer; (dir, params)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from edgekd.models.builtin import BUILTIN_DIR

    h, L, nh, nkv, f = SHAPES[name]
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=4096, hidden_size=h, num_hidden_layers=L, num_attention_heads=nh,
                      num_key_value_heads=nkv, intermediate_size=f, max_position_embeddings=512,
                      tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg)
    out = where / f"qwen2-{name}"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(BUILTIN_DIR).save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def run_job(teacher: Path, run: Path, steps: int, target: str) -> dict:
    cmd = ["/usr/bin/time", "-v", str(ROOT / ".venv" / "bin" / "edgekd"), "distill", "--target", target,
           "--teacher", str(teacher), "--steps", str(steps), "--out", str(run), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", proc.stderr).group(1)
    return {"exit": proc.returncode, "max_rss_mb": rss_kb / 1024, "wall": wall.strip(),
            "error": proc.stderr.strip().splitlines()[0] if proc.returncode else None}


def phases(run: Path) -> dict:
    out = {}
    for f in (run / "checkpoints" / "timings.json", run / "checkpoints" / "job_timings.json"):
        if f.is_file():
            out.update(json.loads(f.read_text()).get("phases", {}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5M,27M,82M")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--target", default="raspberry-pi-5")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "job_memory_bench.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekd-membench-") as tmp:
        for name in args.sizes.split(","):
            teacher, params = make_teacher(name, Path(tmp))
            run = Path(tmp) / f"run-{name}"
            res = run_job(teacher, run, args.steps, args.target)
            rep = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
            ph = phases(run)
            rows.append({"teacher": name, "teacher_params": params, "student_params": rep.get("student", {}).get("params"),
                         **res, "bytes_per_teacher_param": res["max_rss_mb"] * 2**20 / params,
                         "phases": {k: {"peak_rss_mb": v.get("peak_rss_mb"), "peak_child_rss_mb": v.get("peak_child_rss_mb"),
                                        "wall_s": v.get("wall_s"),
                                        "bytes_per_teacher_param": (v.get("peak_rss_mb") or 0) * 2**20 / params}
                                    for k, v in ph.items()},
                         "disk_mb": rep.get("disk_mb")})
    machine = {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
               "loadavg_start": os.getloadavg()}
    Path(args.out).write_text(json.dumps({"machine": machine, "steps": args.steps, "target": args.target,
                                          "rows": rows}, indent=1))
    tab = Table(title=f"the job's memory and disk ({args.target}, --steps {args.steps}; {machine['cpu']})")
    for c in ("teacher", "student", "peak RSS MB", "B / teacher param", "peak by phase (MB)", "run dir MB", "wall"):
        tab.add_column(c, justify="right")
    for r in rows:
        by = ", ".join(f"{k} {v['peak_rss_mb']:.0f}" for k, v in r["phases"].items() if v["peak_rss_mb"])
        tab.add_row(f"{r['teacher_params'] / 1e6:.1f}M", f"{(r['student_params'] or 0) / 1e6:.1f}M",
                    f"{r['max_rss_mb']:.0f}", f"{r['bytes_per_teacher_param']:.1f}", by,
                    f"{(r['disk_mb'] or {}).get('run', 0):.0f}", r["wall"])
    Console().print(tab)


def _cpu() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
