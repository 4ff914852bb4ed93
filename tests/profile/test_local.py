"""The local runner: real onnxruntime and LiteRT runs, DESIGN's keys with consistent statistics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgekd.errors import EdgekdError
from edgekd.profile import board_timer
from edgekd.profile import STAT_KEYS, profile_model


def _sane(stats: dict, fmt: str, runs: int) -> None:
    assert set(STAT_KEYS) <= set(stats)
    assert stats["device"] == "local" and stats["format"] == fmt and stats["runs"] == runs
    assert stats["threads"] >= 1
    assert 0 < stats["min_ms"] <= stats["mean_ms"] <= stats["max_ms"]
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert stats["std_ms"] >= 0 and stats["init_ms"] > 0
    assert 1 < stats["peak_rss_mb"] < 4096 and stats["size_mb"] > 0
    assert isinstance(stats["ops"], list)


def test_local_onnx_profile_with_op_breakdown(tiny_onnx):
    stats = profile_model(tiny_onnx, runs=12, warmup=2, threads=1)
    _sane(stats, "onnx", 12)
    assert stats["threads"] == 1 and len(stats["cores"]) == 1
    assert stats["inputs"] == {"input_ids": [1, 8]}  # seq_len from the sidecar record
    ops = {r["op"] for r in stats["ops"]}
    assert {"MatMul", "Gather"} <= ops
    assert abs(sum(r["percent"] for r in stats["ops"]) - 100.0) < 1e-6


@pytest.mark.slow
def test_local_tflite_profile(tiny_tflite):
    stats = profile_model(tiny_tflite, runs=10, warmup=1)
    _sane(stats, "tflite", 10)
    assert stats["ops"] == []  # the Python interpreter exposes no op profiler


def test_cli_profile_json_prints_one_object(tiny_onnx):
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "profile", str(tiny_onnx), "--runs", "5",
                           "--warmup", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert set(STAT_KEYS) <= set(obj) and obj["runs"] == 5


def test_cli_profile_table(tiny_onnx):
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "profile", str(tiny_onnx), "--runs", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "p99" in proc.stdout and "MatMul" in proc.stdout


@pytest.mark.parametrize("args,needle", [
    (["/nonexistent/model.onnx"], "does not exist"),
    (["{onnx}", "--device", "bluetooth://x"], "unknown device"),
    (["{onnx}", "--runs", "0"], "--runs must be an integer >= 1"),
    (["{corrupt}"], "could not run corrupt.onnx"),
])
def test_cli_profile_errors_exit_2_with_one_line(tiny_onnx, corrupt_onnx, args, needle):
    args = [a.format(onnx=tiny_onnx, corrupt=corrupt_onnx) for a in args]
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "profile", *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_corrupt_model_is_an_edgekd_error(corrupt_onnx, tmp_path):
    with pytest.raises(EdgekdError, match="onnxruntime cannot load"):
        profile_model(corrupt_onnx, runs=1)
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"0123456789" * 10)
    with pytest.raises(EdgekdError, match="not a TFLite flatbuffer"):
        profile_model(fake, runs=1)


def test_big_cores_prefer_the_fastest():
    freqs = {0: 1800000, 1: 1800000, 2: 1800000, 3: 1800000, 4: 2400000, 5: 2400000, 6: 2400000, 7: 3000000}
    assert board_timer.pick_big_cores(freqs, 4) == [4, 5, 6, 7]
    assert board_timer.pick_big_cores(freqs, 1) == [7]
    assert board_timer.pick_big_cores({0: 0, 1: 0}, None) == [0, 1]


def test_summary_statistics_against_numpy():
    import numpy as np

    xs = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    s = board_timer.summarize(xs)
    assert s["mean_ms"] == pytest.approx(np.mean(xs)) and s["std_ms"] == pytest.approx(np.std(xs))
    assert s["p50_ms"] == pytest.approx(3.5) and s["min_ms"] == 1.0 and s["max_ms"] == 10.0
    assert s["p90_ms"] == pytest.approx(np.percentile(xs, 90)) and s["p99_ms"] == pytest.approx(np.percentile(xs, 99))


def test_target_supplies_device_and_threads():
    from edgekd.profile import target_defaults

    assert target_defaults(None, None, None) == ("local", None)
    assert target_defaults("android-arm64", None, None) == ("adb", 4)
    assert target_defaults("android-arm64", "adb:SER", 2) == ("adb:SER", 2)
    with pytest.raises(EdgekdError, match="--device ssh://"):
        target_defaults("raspberry-pi-5", None, None)
    assert target_defaults("raspberry-pi-5", "ssh://pi@rpi", None)[0] == "ssh://pi@rpi"
