"""Kernel benchmark (same as `edgekd kernel bench`): prints a table and writes JSON.

    python benchmarks/kernel_bench.py [--rows N] [--vocab V] [--dtype float32|bfloat16|float16] [--device cpu|cuda]
"""

import argparse

from edgekd.kernels import bench

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--dtype")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    bench.main(rows=a.rows, vocab=a.vocab, dtype=a.dtype, device=a.device, repeats=a.repeats,
               use_compile=not a.no_compile, out=a.out)
