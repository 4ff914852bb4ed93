"""The adb runner: command construction, quoting, core masks, and parsing real benchmark_model logs."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from edgekd.errors import EdgekdError
from edgekd.profile import profile_model
from edgekd.profile.adb import build_commands, cpu_mask, parse_adb_device, parse_cpu_freqs
from edgekd.profile.adb_output import parse_benchmark_output

FIX = Path(__file__).with_name("fixtures")


def test_device_strings():
    assert parse_adb_device("adb") is None
    assert parse_adb_device("adb:R58M12ABCDE") == "R58M12ABCDE"
    with pytest.raises(EdgekdError, match="adb:SERIAL"):
        parse_adb_device("adb:")


def test_big_core_mask_from_sysfs_listing():
    listing = "\n".join(f"/sys/devices/system/cpu/cpu{i}/cpufreq/cpuinfo_max_freq {f}" for i, f in
                        enumerate([1800000] * 4 + [2400000] * 3 + [3000000]))
    freqs = parse_cpu_freqs(listing)
    assert freqs[7] == 3000000 and len(freqs) == 8
    from edgekd.profile.board_timer import pick_big_cores

    assert cpu_mask(pick_big_cores(freqs, 4)) == "f0"
    from edgekd.profile.adb import default_threads

    assert default_threads(freqs) == 4  # 3 performance + 1 prime core, not the 4 little ones
    assert default_threads({0: 1000, 1: 1000}) == 2
    assert cpu_mask([0]) == "1" and cpu_mask([0, 1, 2, 3, 4, 5, 6, 7]) == "ff"


def test_commands_quote_every_path():
    model = "/home/me/my models/student; rm -rf x.tflite"
    cmds = build_commands(model, "emulator-5554", "f0", 4, 30, 5, benchmark_binary="/opt/tools/benchmark model")
    assert cmds["push_model"][:4] == ["adb", "-s", "emulator-5554", "push"]
    assert cmds["push_model"][4] == model  # a local argv element: no shell involved
    remote_model = cmds["push_model"][5]
    run = cmds["run"]
    assert run[:4] == ["adb", "-s", "emulator-5554", "shell"] and len(run) == 5
    words = shlex.split(run[4])  # what the device shell will see
    assert words[:2] == ["taskset", "f0"]
    assert words[2] == "/data/local/tmp/edgekd/benchmark_model"
    assert f"--graph={remote_model}" in words
    assert {"--num_threads=4", "--num_runs=30", "--warmup_runs=5", "--enable_op_profiling=true"} <= set(words)
    assert shlex.split(cmds["cleanup"][4]) == ["rm", "-rf", "/data/local/tmp/edgekd"]
    assert cmds["push_binary"][4] == "/opt/tools/benchmark model"
    on_device = build_commands("/m.tflite", None, "3", 2, 10, 1)
    assert on_device["run"][:2] == ["adb", "shell"] and "check_binary" in on_device
    assert "/data/local/tmp/benchmark_model" in shlex.split(on_device["run"][2])


def test_parse_litert_xnnpack_log():
    s = parse_benchmark_output((FIX / "benchmark_model_litert_xnnpack.txt").read_text())
    assert s["runs"] == 64
    assert s["mean_ms"] == pytest.approx(15.5176) and s["std_ms"] == pytest.approx(0.551)
    assert s["min_ms"] == pytest.approx(14.661) and s["max_ms"] == pytest.approx(17.579)
    assert s["init_ms"] == pytest.approx(32.163) and s["first_ms"] == pytest.approx(19.834)
    assert s["warmup_avg_ms"] == pytest.approx(15.9974)
    assert s["peak_rss_mb"] == pytest.approx(34.8281) and s["init_rss_mb"] == pytest.approx(22.0273)
    assert s["size_mb"] == pytest.approx(4.56118)
    assert s["p50_ms"] is None and s["p90_ms"] is None  # the tool printed no percentiles
    ops = s["ops"]
    assert [o["op"] for o in ops[:3]] == ["Convolution (NHWC, QC8) GEMM", "Convolution (NHWC, QC8) DWConv",
                                          "TFLite_Detection_PostProcess"]
    assert ops[0] == {"op": "Convolution (NHWC, QC8) GEMM", "count": 62, "avg_ms": 5.236, "percent": 34.361,
                      "times_called": 101}
    assert len(ops) == 11 and "ModifyGraphWithDelegate" not in {o["op"] for o in ops}  # init table skipped


def test_parse_android_log_with_peak_memory_wording():
    s = parse_benchmark_output((FIX / "benchmark_model_android_tf23.txt").read_text())
    assert s["runs"] == 50 and s["mean_ms"] == pytest.approx(33.2094) and s["max_ms"] == pytest.approx(34.005)
    assert s["threads"] == 4 and s["init_ms"] == pytest.approx(0.855)
    assert s["peak_rss_mb"] == pytest.approx(12.8672) and s["ops"] == []


def test_parse_2019_log_without_summary_lines():
    s = parse_benchmark_output((FIX / "benchmark_model_2019.txt").read_text())
    assert s["runs"] == 626 and s["mean_ms"] == pytest.approx(1.59271) and s["min_ms"] == pytest.approx(1.586)
    assert s["init_ms"] == pytest.approx(0.378) and s["threads"] == 1 and s["peak_rss_mb"] is None


def test_parse_percentiles_when_printed():
    s = parse_benchmark_output("count=10 first=900 curr=1000 min=800 max=1500 avg=1000 std=50 p5=820 "
                               "median=990 p90=1200 p99=1450\n")
    assert s["p50_ms"] == pytest.approx(0.99) and s["p90_ms"] == pytest.approx(1.2) and s["p99_ms"] == 1.45


def test_parse_garbage_is_an_error():
    with pytest.raises(EdgekdError, match="no timings"):
        parse_benchmark_output("ERROR: Could not open '/data/local/tmp/x.tflite'.\nAborted\n")


def test_missing_adb_names_platform_tools(tiny_tflite, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EdgekdError, match="platform-tools"):
        profile_model(tiny_tflite, device="adb", runs=2)


def test_adb_refuses_onnx(tiny_onnx):
    with pytest.raises(EdgekdError, match="--format tflite"):
        profile_model(tiny_onnx, device="adb:XYZ", runs=2)
