"""The SIMD paths against the scalar one, from C++ alone: AVX2 natively, NEON under qemu when the
aarch64 cross compiler and qemu-aarch64 are installed (Debian: g++-aarch64-linux-gnu, qemu-user)."""

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["csrc/tests/kd_selftest.cpp", "csrc/cpu/kd_cpu.cpp", "csrc/cpu/kd_cpu_scalar.cpp"]


def _build_and_run(cxx, extra_sources, defines, tmp_path, runner=()):
    exe = tmp_path / "kd_selftest"
    objs = []
    for src in SOURCES + extra_sources:
        flags = ["-mavx2", "-mfma", "-mf16c"] if src.endswith("avx2.cpp") else []
        obj = tmp_path / (Path(src).stem + ".o")
        subprocess.run([cxx, "-std=c++17", "-O2", "-fopenmp", "-Wall", "-Werror", *defines, *flags,
                        "-I", str(ROOT / "csrc"), "-c", str(ROOT / src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    subprocess.run([cxx, "-fopenmp", *objs, "-o", str(exe)], check=True)
    res = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not shutil.which("g++"),
                    reason="native x86-64 check")
def test_avx2_matches_scalar(tmp_path):
    out = _build_and_run("g++", ["csrc/cpu/kd_cpu_avx2.cpp"], ["-DEDGEKD_HAVE_AVX2=1"], tmp_path)
    assert " 0 failed" in out and "passed" in out


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64")),
                    reason="needs g++-aarch64-linux-gnu and qemu-user")
def test_neon_matches_scalar_under_qemu(tmp_path):
    out = _build_and_run("aarch64-linux-gnu-g++", ["csrc/cpu/kd_cpu_neon.cpp"], ["-DEDGEKD_HAVE_NEON=1"], tmp_path,
                         runner=("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"))
    assert "isa: neon" in out and " 0 failed" in out
