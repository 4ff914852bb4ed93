"""`edgekd export` on the command line, and the run-directory steps the distill job calls (export, then profile)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edgekd.profile import STAT_KEYS


@pytest.mark.slow
def test_cli_export_writes_file_and_record(bert_dir, tmp_path):
    out = tmp_path / "cls.onnx"
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "export", str(bert_dir), "--format", "onnx",
                           "--seq-len", "12", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(out.with_name("cls.onnx.json").read_text())
    assert out.is_file() and rec["passed"] and rec["seq_len"] == 12 and rec["kind"] == "classifier"
    assert "wrote" in proc.stdout and "top-1 agreement" in proc.stdout


@pytest.mark.parametrize("args,needle", [
    (["{missing}", "--format", "onnx"], "does not exist"),
    (["{model}", "--format", "coreml"], "unknown format 'coreml'"),
    (["{model}", "--format", "onnx", "--quantize", "fp4"], "unknown quantisation 'fp4'"),
    (["{model}", "--format", "onnx", "--out", "{tmp}/x.tflite"], "must end in .onnx"),
])
def test_cli_export_errors_exit_2(bert_dir, tmp_path, args, needle):
    args = [a.format(missing=tmp_path / "none", model=bert_dir, tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "export", *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


@pytest.mark.slow
def test_run_directory_gets_exports_records_and_profiles(llama_dir, tmp_path):
    from edgekd.export import export_run
    from edgekd.profile.exports import profile_exports

    run = tmp_path / "run"
    shutil.copytree(llama_dir, run / "student")
    exports = export_run(run, seq_len=16)
    assert not (run / "profile").exists()  # export only: profiling is profile/'s step
    measured = profile_exports(run, exports, runs=5, warmup=1)
    assert set(exports) == {"onnx", "onnx-int8", "tflite", "tflite-int8"}
    for key, name in [("onnx", "student.onnx"), ("onnx-int8", "student.int8.onnx"), ("tflite", "student.tflite"),
                      ("tflite-int8", "student.int8.tflite")]:
        e = exports[key]
        assert e["passed"] and e["path"] == f"export/{name}"
        assert e["precision"] == ("float32" if e["quantize"] == "none" else "int8")
        assert (run / e["path"]).is_file()
        assert json.loads((run / (e["path"] + ".json")).read_text())["passed"]
        assert 0 <= e["max_abs_diff"] and 0.9 <= e["top1_agreement"] <= 1.0
    summary = json.loads((run / "export" / "export.json").read_text())
    assert set(summary["files"]) == set(exports)
    assert len(measured) == 4
    for m in measured:
        prof = json.loads((run / m["profile"]).read_text())
        assert set(STAT_KEYS) <= set(prof) and prof["device"] == "local" == m["device"]
        assert m["p50_ms"] <= m["p90_ms"] and m["format"] in ("onnx", "tflite")
    assert sorted(p.name for p in (run / "profile").iterdir()) == [
        "onnx-float-local.json", "onnx-int8-local.json", "tflite-float-local.json", "tflite-int8-local.json"]
