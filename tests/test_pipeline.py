"""The one-command job (`edgekd distill --target`) end to end on a tiny teacher: the run directory,
every DESIGN.md report key, the one-line errors, and the recalibrate-and-shrink loop on `host`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.distill.helpers import tiny_teacher, write_text_dir

# Wider than the engine tests' teacher so the search has a real range (hidden 16..128, 1..4 layers).
TEACHER = dict(hidden_size=128, heads=8, layers=4, intermediate_size=256, max_positions=128, train_steps=20)
JOB = ["--logits", "--steps", "6", "--seq-len", "32", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """Host facts, token caches and calibrations go to a throwaway cache, never the user's."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        mp.setenv("EDGEKD_CACHE", str(cache / "edgekd"))
        yield


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("teacher") / "t", **TEACHER)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_text_dir(tmp_path_factory.mktemp("data") / "d")


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run `edgekd ARGS` in this process through the real entry point; (exit code, stdout, stderr)."""
    from edgekd.cli import main

    monkeypatch.setattr(sys, "argv", ["edgekd", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def job(teacher, data, tmp_path_factory):
    """`edgekd distill --target android-arm64` (no --student): the whole job through the CLI."""
    mp, out = pytest.MonkeyPatch(), tmp_path_factory.mktemp("job") / "run"
    from edgekd.cli import main

    mp.setattr(sys, "argv", ["edgekd", "distill", "--target", "android-arm64", "--teacher", str(teacher),
                             "--data", str(data), "--out", str(out), *JOB])
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code
    finally:
        mp.undo()
    return out


def test_job_writes_the_whole_run_directory(job):
    for f in ("config.json", "student/config.json", "student/model.safetensors", "student/tokenizer.json",
              "report.json", "report.md", "plots/loss_curves.png", "search/candidates.csv",
              "search/candidates.json", "search/search.png", "export/export.json"):
        assert (job / f).is_file(), f
    for name in ("student.onnx", "student.int8.onnx", "student.tflite", "student.int8.tflite"):
        assert (job / "export" / name).stat().st_size > 0, name
        rec = json.loads((job / "export" / f"{name}.json").read_text())
        assert rec["passed"] and "max_abs_diff" in rec and "top1_agreement" in rec, name
    profiles = sorted(p.name for p in (job / "profile").glob("*.json"))
    assert profiles == ["onnx-float-local.json", "onnx-int8-local.json", "tflite-float-local.json",
                        "tflite-int8-local.json"]
    for p in (job / "profile").glob("*.json"):
        assert json.loads(p.read_text())["p50_ms"] > 0


def test_job_report_has_every_design_key(job):
    rep = json.loads((job / "report.json").read_text())
    assert rep["target"] == "android-arm64" and rep["latency_budget_ms"] == 2.0  # the target file's default
    for who in ("teacher", "student", "scratch"):
        assert rep[who]["params"] > 0 and rep[who]["eval_loss"] > 0, who
    assert rep["teacher"]["size_mb"] > 0 and rep["student"]["size_mb"] > 0
    assert 0 <= rep["student"]["top1_agreement"] <= 1 and 0 <= rep["scratch"]["top1_agreement"] <= 1
    assert rep["student"]["params"] == rep["scratch"]["params"] < rep["teacher"]["params"]
    lat = rep["latency"]
    # the search's prediction for the chosen student, within the budget
    table = json.loads((job / "search" / "candidates.json").read_text())
    chosen = [r for r in table["candidates"] if r["chosen"]]
    assert len(chosen) == 1 and lat["predicted_ms"] == chosen[0]["predicted_ms"] <= rep["latency_budget_ms"]
    assert rep["student"]["params"] == chosen[0]["params"] == rep["search"]["params"]
    for k in ("num_hidden_layers", "hidden_size", "intermediate_size"):
        assert rep["student"]["config"][k] == chosen[0][k] == rep["search"]["choice"][k]
    assert lat["precision"] == chosen[0]["precision"] and lat["format"] == "tflite"
    assert len(lat["measured"]) == 4
    for m in lat["measured"]:
        assert m["device"] == "local" and m["format"] in ("onnx", "tflite") and 0 < m["p50_ms"] <= m["p90_ms"]
    assert lat["measured_on_target_ms"] is None  # an adb target, --device local: predicted, not measured there
    for fmt in ("onnx", "tflite"):
        e = rep["exports"][fmt]
        assert e["path"] == f"export/student.{fmt}" and e["max_abs_diff"] >= 0 and e["top1_agreement"] >= 0.99
        assert rep["exports"][f"{fmt}-int8"]["passed"]
    # each file's own quality in its runtime on the held-out blocks parity runs (16 of them, 32 tokens each)
    for key, e in rep["exports"].items():
        assert e["quality_on"]["tokens"] == e["quality_on"]["blocks"] * 31 and e["quality_on"]["blocks"] > 0, key
        assert e["eval_loss"] > 0 and 0 <= e["top1_agreement_teacher"] <= 1, key
        if e["precision"] == "float32":
            assert e["eval_loss"] == pytest.approx(e["pytorch_float"]["eval_loss"], abs=1e-4), key
    md = (job / "report.md").read_text()
    shipped = next(k for k, e in rep["exports"].items() if (e["format"], e["precision"]) == (lat["format"], lat["precision"]))
    assert f"The file that ships, {shipped} (`{rep['exports'][shipped]['path']}`)" in md and md.count(" file in ") == 4
    assert rep["search"]["table"] == "search/candidates.csv" and rep["search"]["plot"] == "search/search.png"
    assert rep["search"]["choice"]["precision"] in ("float32", "int8")
    job_t = rep["timings_s"]["job"]
    for phase in ("search", "distill+scratch+eval", "export+parity+local_profile", "total"):
        assert job_t[phase]["cpu_s"] >= 0, phase
    assert rep["schema_version"] >= 1 and rep["calibration"]["source"] == "priors"
    from edgekd.report import ENGINE_KEYS, JOB_KEYS, missing_keys

    assert missing_keys(rep, ENGINE_KEYS) == [] and missing_keys(rep, JOB_KEYS) == []
    assert (job / "search" / "calibration.json").is_file() and (job / "job.json").is_file()
    md = (job / "report.md").read_text()
    assert "2 ms" in md and "scratch baseline" in md and "search/search.png" in md
    assert f"{lat['predicted_ms']:.3f}" in md and "export/student.tflite" in md


def test_no_student_fits_exits_2_naming_the_smallest(teacher, data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = cli(monkeypatch, capsys, "distill", "--target", "android-arm64", "--latency-budget", "0.0001",
                       "--teacher", teacher, "--data", data, "--out", out, *JOB)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "the nearest" in lines[0] and "predicted at" in lines[0] and "ms" in lines[0]
    assert "Traceback" not in err and not (out / "config.json").exists() and not (out / "report.json").exists()


def test_unknown_target_exits_2_in_one_line(teacher, data, tmp_path, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "distill", "--target", "no-such-phone", "--teacher", teacher,
                       "--data", data, "--out", tmp_path / "run", *JOB)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no-such-phone" in lines[0] and "android-arm64" in lines[0]
    assert not (tmp_path / "run").exists()


def test_measured_miss_recalibrates_and_shrinks(teacher, data, tmp_path):
    """On `host` the device is this machine. A starting calibration that thinks it is 1000x faster than
    it is picks the largest student; the measured miss (no ONNX Runtime call of a 4-layer model takes
    50 us) recalibrates the model from the measurement, and the job distills a strictly smaller one."""
    from edgekd.distill import DistillConfig
    from edgekd.pipeline import JobConfig, distill_for_target
    from edgekd.targets import load_target, measure_target
    from edgekd.targets.cost_latency import KINDS, Calibration, default_calibration

    base = default_calibration(measure_target(load_target("host")), "onnx")
    optimistic = Calibration(device="host", fmt="onnx", eff_compute={k: 1e4 for k in KINDS} | {"matmul": 30.0,
                             "matmul_int8": 30.0}, eff_mem={k: 1e4 for k in KINDS}, overhead_us=1e-4,
                             call_overhead_us=1e-3, facts=base.facts)
    from edgekd.errors import JobFailed

    out = tmp_path / "run"
    try:
        distill_for_target(JobConfig(DistillConfig(teacher=str(teacher), data=str(data), out=str(out), steps=4,
                                                   seq_len=32, batch_size=4, eval_blocks=4, quiet=True, threads=1),
                                     target="host", latency_budget_ms=0.05, calibration=optimistic, max_shrinks=1,
                                     profile_runs=10, generative=False))
        missed = False
    except JobFailed as e:  # still over 0.05 ms after the shrink: the job failed (exit 1), the report says why
        assert "missed the budget" in str(e)
        missed = True
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == ("failed" if missed else "complete")
    attempts = rep["search"]["attempts"]
    assert len(attempts) == 2, (attempts, rep["exports"], rep["latency"])
    first, second = attempts
    assert first["measured_ms"] > 0.05 and first["predicted_ms"] <= 0.05
    assert second["params"] < first["params"] and second["calibrated"]
    assert rep["student"]["params"] == second["params"]
    assert (out / "attempts" / "0" / "student" / "model.safetensors").is_file()
    assert (out / "attempts" / "0" / "search" / "candidates.csv").is_file()
    cal = json.loads((out / "search" / "calibration.json").read_text())
    assert cal["device"] == "host" and cal["n_measurements"] == 2  # the deployed file and its other precision
    on_target = [m for m in rep["latency"]["measured"] if m.get("on_target")]
    assert on_target and rep["latency"]["measured_on_target_ms"] == second["measured_ms"]
    assert rep["latency"]["meets_budget_measured"] is (second["measured_ms"] <= 0.05)
    assert "attempts/N/" in (out / "report.md").read_text()
    assert Path(rep["exports"]["onnx"]["path"]) == Path("export/student.onnx")
    assert rep["calibration"]["source"] == "given" and "recalibrated" in rep["calibration"]
    assert rep["target_facts"]["name"] == "host" and "cpu.peak_gflops_fp32" in rep["target_facts"]["measured"]


def test_resume_with_other_job_flags_is_one_line(job, teacher, data, monkeypatch, capsys):
    """--resume continues the job as configured: a different budget or device is named, exit 2, no work."""
    before = (job / "report.json").read_text()
    code, _, err = cli(monkeypatch, capsys, "distill", "--target", "android-arm64", "--teacher", teacher, "--data", data,
                       "--out", job, "--resume", "--latency-budget", "7", *JOB)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "latency_budget_ms" in lines[0] and "7" in lines[0], err
    assert (job / "report.json").read_text() == before


def test_calibration_is_explicit(teacher, data, tmp_path, monkeypatch, capsys):
    """--calibration saved without a saved one is a one-line error before any work; a path that is not there too."""
    for value, needle in (("saved", "no saved calibration"), (str(tmp_path / "none.json"), "does not exist")):
        code, _, err = cli(monkeypatch, capsys, "distill", "--target", "android-arm64", "--teacher", teacher,
                           "--data", data, "--out", tmp_path / "run", "--calibration", value, *JOB)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run" / "config.json").exists()
