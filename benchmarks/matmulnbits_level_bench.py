"""What float32 activations cost onnx-genai's quantised files: MatMulNBits at accuracy_level=1 (what edgekd builds:
the same numbers on x86 and arm64) against the builder's CPU default 4 (int8 activations, whose aarch64 kernels
compute other numbers than the x86 ones), on this machine.

    python benchmarks/matmulnbits_level_bench.py [--hidden 1024] [--layers 8] [--repeats 5]
                                                 [--out benchmarks/matmulnbits_level_bench.json]

One random-weight Qwen2 (vocabulary 4096; weights do not change speed) exported once as onnx-genai int4 with
edgekd's export_generative; a copy of the folder gets accuracy_level=4 on every MatMulNBits node, nothing else
changed. The two are timed interleaved in this process with edgekd's profile_generation (prefill of --prompt-len
tokens, decode of --decode-len), best of --repeats each, and compared as ratios. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def random_qwen(where: Path, hidden: int, layers: int) -> Path:
    from edgekd.models.published import random_teacher

    random_teacher(dict(model_type="qwen2", vocab_size=4096, hidden_size=hidden, intermediate_size=hidden * 3,
                        num_hidden_layers=layers, num_attention_heads=hidden // 64,
                        num_key_value_heads=max(1, hidden // 256), max_position_embeddings=512,
                        tie_word_embeddings=False), where)
    return where


def with_level(src: Path, dst: Path, level: int) -> Path:
    import onnx
    from onnx import helper

    shutil.copytree(src, dst)
    onnx_path = next(dst.glob("*.onnx"))
    model = onnx.load(str(onnx_path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("accuracy_level", level)])
    onnx.save(model, str(onnx_path))
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--decode-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "matmulnbits_level_bench.json"))
    args = ap.parse_args(argv)

    from edgekd.export import export_generative
    from edgekd.export.generative_export import og_accuracy_level
    from edgekd.profile import profile_generation

    ours = og_accuracy_level("int4")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = random_qwen(tmp / "model", args.hidden, args.layers)
        rec = export_generative(model, "onnx-genai", "int4", out=tmp / "m-genai.int4", show_progress=False)
        files = {ours: Path(rec["path"]), 4: with_level(Path(rec["path"]), tmp / "m-genai.int4.level4", 4)}
        best: dict[int, dict[str, float]] = {}
        for _ in range(args.repeats):
            for level, path in files.items():  # interleaved: both see the same machine state
                s = profile_generation(path, "local", prompt_len=args.prompt_len, decode_len=args.decode_len, runs=3,
                                       warmup=1, threads=args.threads)
                b = best.setdefault(level, {"prefill_tok_s": 0.0, "decode_tok_s": 0.0, "ttft_ms": float("inf")})
                b["prefill_tok_s"] = max(b["prefill_tok_s"], s["prefill_tok_s"]["max"])
                b["decode_tok_s"] = max(b["decode_tok_s"], s["decode_tok_s"]["max"])
                b["ttft_ms"] = min(b["ttft_ms"], s["ttft_ms"]["min"])
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    ratios = {k: best[ours][k] / best[4][k] for k in ("prefill_tok_s", "decode_tok_s", "ttft_ms")}
    table = Table(title=f"onnx-genai int4, hidden {args.hidden} x {args.layers} layers, {args.threads} threads, {cpu}")
    for c in ("accuracy_level", "prefill tok/s", "decode tok/s", "TTFT ms"):
        table.add_column(c, justify="right")
    for level in files:
        b = best[level]
        table.add_row(str(level) + (" (edgekd)" if level == ours else " (builder default)"),
                      f"{b['prefill_tok_s']:.0f}", f"{b['decode_tok_s']:.1f}", f"{b['ttft_ms']:.2f}")
    table.add_row(f"{ours} / 4", f"{ratios['prefill_tok_s']:.2f}x", f"{ratios['decode_tok_s']:.2f}x",
                  f"{ratios['ttft_ms']:.2f}x")
    Console().print(table)
    out = {"machine": {"cpu": cpu, "cores": os.cpu_count(), "loadavg": os.getloadavg()}, "args": vars(args),
           "best": {str(k): v for k, v in best.items()}, "ratio_ours_over_level4": ratios}
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
