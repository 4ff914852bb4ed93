"""Generation profiling (`edgekd profile --generative`): real runs of real exports locally and through a
real sshd on 127.0.0.1, and LiteRT-LM's Android runtime binary's recorded output over adb."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.cli import main
from edgekd.errors import EdgekdError
from edgekd.profile.adb_output import parse_benchmark_info
from edgekd.profile.generation_profile import GEN_KEYS, profile_generation

FIXTURES = Path(__file__).parent / "fixtures"
BUILTIN = Path(__file__).resolve().parents[2] / "edgekd" / "models" / "builtin_teacher"


@pytest.fixture(scope="module")
def genai_folder(tmp_path_factory):
    """The built-in teacher through onnxruntime-genai's model builder (float32), as `edgekd export` makes it."""
    from edgekd.export import export_generative

    out = tmp_path_factory.mktemp("gen") / "teacher-genai"
    export_generative(BUILTIN, "onnx-genai", "none", out=out, show_progress=False)
    return out


@pytest.fixture(scope="module")
def litertlm_file(tmp_path_factory):
    from edgekd.export import export_generative

    out = tmp_path_factory.mktemp("gen") / "teacher.int4.litertlm"
    export_generative(BUILTIN, "litert-lm", "int4", out=out, show_progress=False)
    return out


def _check_stats(stats: dict, prompt_len: int, decode_len: int, runs: int) -> None:
    assert set(GEN_KEYS) <= set(stats)
    assert (stats["prompt_len"], stats["decode_len"], stats["runs"]) == (prompt_len, decode_len, runs)
    for key in ("ttft_ms", "prefill_tok_s", "decode_tok_s"):
        s = stats[key]
        assert len(s["values"]) == runs and s["min"] <= s["median"] <= s["max"] and s["min"] > 0
    assert stats["init_ms"] > 0 and stats["peak_rss_mb"] > 10 and stats["size_mb"] > 0.5
    # time to first token covers the whole prefill: it cannot be shorter than the prompt at the measured rate
    assert stats["ttft_ms"]["median"] >= 0.5 * 1e3 * prompt_len / stats["prefill_tok_s"]["max"]


@pytest.mark.slow
def test_onnx_genai_locally(genai_folder):
    stats = profile_generation(genai_folder, prompt_len=16, decode_len=24, runs=2, warmup=1, threads=1)
    _check_stats(stats, 16, 24, 2)
    assert stats["format"] == "onnx-genai" and stats["runtime"].startswith("onnxruntime-genai")
    assert stats["precision"] == "float32" and stats["threads"] == 1 and stats["device"] == "local"


@pytest.mark.slow
def test_litert_lm_locally_through_the_cli(litertlm_file, capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", str(litertlm_file), "--generative", "--prompt-len", "16", "--decode-len", "16", "--runs",
              "2", "--json"])
    assert e.value.code == 0
    stats = json.loads(capsys.readouterr().out)
    _check_stats(stats, 16, 16, 2)
    assert stats["format"] == "litert-lm" and stats["precision"] == "int4"
    assert stats["prompt_tokens"] == [16, 16] and stats["decode_tokens"] == [16, 16]  # what the runtime ran, per run


@pytest.mark.slow
def test_onnx_genai_over_real_sshd(sshd, genai_folder):
    import glob

    before = set(glob.glob("/tmp/edgekd.*"))
    stats = profile_generation(genai_folder, device=sshd["url"], prompt_len=8, decode_len=8, runs=2, warmup=0,
                               remote_python=sys.executable, identity_file=sshd["key"], known_hosts=sshd["known_hosts"])
    _check_stats(stats, 8, 8, 2)
    assert stats["device"] == sshd["url"] and stats["format"] == "onnx-genai"
    import platform  # the export's parity, run again where it was timed (this machine's ISA, through ssh)

    p = stats["parity"]
    assert p["passed"] and p["prompts_matched"] == p["prompts"] == 8 and p["machine"] == platform.machine()
    assert p["here"]["same_tokens_as_device"] == 8 and stats["emulated"] is False
    assert set(glob.glob("/tmp/edgekd.*")) == before  # the folder and runners were removed from the "board"


def test_not_a_generative_export(tmp_path, capsys):
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(SystemExit) as e:
        main(["profile", str(tmp_path), "--generative"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "neither a .litertlm bundle nor an onnxruntime-genai folder" in err and "Traceback" not in err


def test_bad_lengths_are_one_line():
    with pytest.raises(EdgekdError, match="--decode-len"):
        profile_generation(BUILTIN, decode_len=0)


# --- adb: LiteRT-LM's litert_lm_main ---------------------------------------------------------------

def test_parse_v0_16_block_takes_the_binarys_last_block():
    got = parse_benchmark_info((FIXTURES / "litert_lm_main_v0.16_format.txt").read_text())
    assert got["prefill_tok_s"] == pytest.approx(26.16) and got["decode_tok_s"] == pytest.approx(31.08)
    assert got["ttft_ms"] == pytest.approx(800.0) and got["init_ms"] == pytest.approx(245.18)
    assert (got["prompt_tokens"], got["decode_tokens"]) == (20, 128)
    assert got["prefill_ms"] == pytest.approx(764.48) and got["decode_ms"] == pytest.approx(4118.169165)
    # the speeds agree with the turns they summarise
    assert 1e3 * got["decode_tokens"] / got["decode_ms"] == pytest.approx(got["decode_tok_s"], rel=1e-3)


def test_parse_v0_11_phone_block_without_ttft_line():
    got = parse_benchmark_info((FIXTURES / "litert_lm_main_v0.11.0-rc.1_phone.txt").read_text())
    assert got["prefill_tok_s"] == pytest.approx(40.26) and got["decode_tok_s"] == pytest.approx(32.07)
    assert got["init_ms"] == pytest.approx(512.05)
    assert got["ttft_ms"] == pytest.approx(372.565677 + 93.549531 / 3)  # BenchmarkInfo::GetTimeToFirstToken
    assert got["peak_rss_mb"] is None  # not printed: not guessed


def test_parse_output_without_block_is_one_line():
    with pytest.raises(EdgekdError, match="no BenchmarkInfo"):
        parse_benchmark_info("F0000 check failed: model not found\n")


FAKE_ADB = r'''#!{python}
"""A phone for the adb runner: records every call, answers like adb, runs litert_lm_main as recorded."""
import json, os, sys
log, fixture = {log!r}, {fixture!r}
args = sys.argv[1:]
if args[:1] == ["-s"]:
    args = args[2:]
with open(log, "a") as f:
    f.write(json.dumps(args) + "\n")
if args[0] == "shell" and "cpuinfo_max_freq" in args[1]:
    for c, f in enumerate([1800000] * 4 + [2400000] * 3 + [3300000]):
        print(f"/sys/devices/system/cpu/cpu{{c}}/cpufreq/cpuinfo_max_freq {{f}}")
elif args[0] == "shell" and "litert_lm_main --backend=cpu" in args[1]:
    sys.stdout.write(open(fixture).read())
elif args[0] == "get-state":
    print("device")
'''


def test_adb_pushes_runs_parses_and_cleans_up(tmp_path, monkeypatch):
    log = tmp_path / "adb.log"
    adb = tmp_path / "bin" / "adb"
    adb.parent.mkdir()
    adb.write_text(FAKE_ADB.format(python=sys.executable, log=str(log),
                                   fixture=str(FIXTURES / "litert_lm_main_v0.16_format.txt")))
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{adb.parent}{os.pathsep}{os.environ['PATH']}")
    model, binary = tmp_path / "student.int4.litertlm", tmp_path / "litert_lm_main"
    model.write_bytes(b"\0" * 1000)
    binary.write_bytes(b"\x7fELF")
    stats = profile_generation(model, device="adb:R5CX", prompt_len=20, decode_len=128, runs=3, warmup=1,
                               benchmark_binary=str(binary))
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    runs = [c for c in calls if c[0] == "shell" and "--benchmark" in c[1]]
    assert len(runs) == 4  # 1 warmup + 3 timed
    assert runs[0][1].startswith("taskset f0 ") and "--num_cpu_threads=4" in runs[0][1]  # prime + performance cores
    assert "--benchmark_prefill_tokens=20" in runs[0][1] and "--benchmark_decode_tokens=128" in runs[0][1]
    assert ["push", str(model), "/data/local/tmp/edgekd/student.int4.litertlm"] in calls
    assert calls[-1] == ["shell", "rm -rf /data/local/tmp/edgekd"]
    assert stats["device"] == "adb:R5CX" and stats["runs"] == 3 and stats["runtime"] == "litert_lm_main"
    assert stats["decode_tok_s"]["median"] == pytest.approx(31.08) and stats["ttft_ms"]["median"] == pytest.approx(800)
    assert stats["parity"]["checked"] is False and "not token ids" in stats["parity"]["why"]  # said, not skipped
    assert set(GEN_KEYS) <= set(stats)


def test_adb_needs_the_runtime_binary(tmp_path):
    model = tmp_path / "m.litertlm"
    model.write_bytes(b"\0")
    with pytest.raises(EdgekdError, match="--benchmark-binary"):
        profile_generation(model, device="adb", benchmark_binary=str(tmp_path / "missing"))
