"""Float against int8: file size, parity and local latency for onnxruntime and LiteRT on one model.

    python benchmarks/export_bench.py MODEL_DIR [--seq-len 64] [--runs 50] [--out benchmarks/export_bench.json]
    python benchmarks/export_bench.py --random-llama     # a randomly initialised Llama of the built-in size

Every variant is exported with edgekd's own export_model (so it passes or fails the same parity check
users get) and timed with profile_model on this machine, pinned and in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekd.errors import EdgekdError  # noqa: E402
from edgekd.export import export_model  # noqa: E402
from edgekd.profile import profile_model  # noqa: E402

VARIANTS = [("onnx", "none"), ("onnx", "int8-dynamic"), ("onnx", "int8"),
            ("tflite", "none"), ("tflite", "int8-dynamic"), ("tflite", "int8")]


def random_llama(where: Path) -> Path:
    """Llama of the built-in family's size, random weights: latency and size do not depend on training."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
    d = where / "random-llama-4096v-256h-4l"
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?")
    ap.add_argument("--random-llama", action="store_true")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "export_bench.json"))
    a = ap.parse_args(argv)
    if not a.model_dir and not a.random_llama:
        ap.error("give MODEL_DIR or --random-llama")
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(a.model_dir) if a.model_dir else random_llama(Path(tmp))
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model_dir)
        rows = []
        for fmt, quant in VARIANTS:
            out = Path(tmp) / "export" / f"model.{quant}.{fmt}"
            t0 = time.perf_counter()
            try:
                rec = export_model(model_dir, fmt=fmt, quantize=quant, seq_len=a.seq_len, out=out)
            except EdgekdError as e:
                rows.append({"format": fmt, "quantize": quant, "passed": False, "error": str(e)})
                console.print(f"[yellow]{fmt} {quant}: {e}")
                continue
            export_s = time.perf_counter() - t0
            stats = profile_model(out, runs=a.runs, warmup=a.warmup, threads=a.threads)
            rows.append({"format": fmt, "quantize": quant, "passed": True, "method": rec.get("method", "float"),
                         "size_mb": rec["size_mb"], "max_abs_diff": rec["max_abs_diff"],
                         "top1_agreement": rec["top1_agreement"], "export_s": export_s,
                         **{k: stats[k] for k in ("runtime", "threads", "mean_ms", "p50_ms", "p90_ms", "p99_ms",
                                                   "min_ms", "init_ms", "peak_rss_mb")}})
    result = {"model": {"dir": str(a.model_dir or "random Llama (seed 0)"), "architecture": cfg.architectures,
                        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
                        "num_hidden_layers": cfg.num_hidden_layers,
                        "intermediate_size": getattr(cfg, "intermediate_size", None)},
              "seq_len": a.seq_len, "runs": a.runs, "warmup": a.warmup,
              "machine": {"cpu": cpu_name(), "cores": __import__("os").cpu_count(), "platform": platform.platform()},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    t = Table(title=f"export bench: {result['model']['dir']}, seq {a.seq_len}, {a.runs} runs, {cpu_name()}")
    for col in ("format", "quant", "size MB", "p50 ms", "p90 ms", "mean ms", "init ms", "RSS MB", "max|diff|",
                "top-1"):
        t.add_column(col, justify="left" if col in ("format", "quant") else "right")
    for r in rows:
        if not r["passed"]:
            t.add_row(r["format"], r["quantize"], *(["-"] * 7), "failed parity")
            continue
        t.add_row(r["format"], r["quantize"], f"{r['size_mb']:.2f}", f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                  f"{r['mean_ms']:.2f}", f"{r['init_ms']:.0f}", f"{r['peak_rss_mb']:.0f}",
                  f"{r['max_abs_diff']:.2g}", f"{r['top1_agreement']:.3f}")
    console.print(t)
    console.print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
