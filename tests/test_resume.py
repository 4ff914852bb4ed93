"""`edgekd distill --target` killed with SIGKILL in each phase and rerun with --resume ends where an
uninterrupted run ends (the same student weights, bit for bit; the same report keys; timings of every
invocation), a second edgekd on the same --out is refused while the first runs, and a run's console
holds edgekd's own lines only. All through the real command, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distill.helpers import tiny_teacher, write_text_dir

JOB = ["--target", "android-arm64", "--logits", "--steps", "8", "--seq-len", "32", "--batch-size", "4"]
PHASES = ["search", "distill", "scratch", "export", "profile"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    e = dict(os.environ, EDGEKD_CACHE=str(cache / "edgekd"), XDG_CACHE_HOME=str(cache), OMP_NUM_THREADS="1")
    e.pop("EDGEKD_FAULT", None)
    return e


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    teacher = tiny_teacher(root / "teacher", hidden_size=64, heads=4, layers=2, intermediate_size=128,
                           max_positions=64, train_steps=10)
    return ["--teacher", str(teacher), "--data", str(write_text_dir(root / "data", n=6))]


def edgekd(args, env, cwd=None, fault=None):
    e = dict(env, **({"EDGEKD_FAULT": f"kill:{fault}"} if fault else {}))
    return subprocess.run([sys.executable, "-m", "edgekd.cli", *map(str, args)], env=e, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(inputs, env, tmp_path_factory):
    """One uninterrupted job, started from a working directory with a relative --out."""
    cwd = tmp_path_factory.mktemp("ref")
    res = edgekd(["distill", *JOB, *inputs, "--out", "run"], env, cwd=cwd)
    assert res.returncode == 0, res.stderr
    return cwd / "run", res


def _keys(d, prefix=""):
    """Every key path of a report, without the values that differ from run to run."""
    out = set()
    for k, v in d.items():
        if k in ("timings_s", "measured") or prefix.endswith("latency.") and k.startswith("measured"):
            continue
        out.add(prefix + k)
        if isinstance(v, dict) and k not in ("config", "init", "choice", "exports"):
            out |= _keys(v, prefix + k + ".")
    return out


def test_uninterrupted_job_prints_only_its_own_lines(reference):
    run, res = reference
    text = res.stdout + res.stderr
    for noise in ("Traceback", "Warning", "WARNING", "absl", "torchao", "Loading weights", "it/s]",
                  "Applying Transformations", "torchvision"):
        assert noise not in text, f"{noise!r} reached the console:\n{text}"
    assert "job written to" in res.stdout
    log = run / "edgekd.log"
    assert log.is_file()  # what third parties printed is kept, in the run directory
    rep = json.loads((run / "report.json").read_text())
    assert rep["status"] == "complete" and all(e["passed"] for e in rep["exports"].values())
    assert rep["timings_s"]["job"]["invocations"] == 1
    assert not list(run.glob("export/.*")), "temp folders outlived the run"


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_in_each_phase_then_resume_gives_the_same_student(phase, reference, inputs, env, tmp_path):
    ref, _ = reference
    out = tmp_path / "run"
    killed = edgekd(["distill", *JOB, *inputs, "--out", out], env, fault=phase)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if (out / "report.json").is_file():  # killed after training: the report must not look complete
        rep = json.loads((out / "report.json").read_text())
        assert rep["status"] == "incomplete"
        assert (out / "report.md").read_text().splitlines()[2].startswith("> **INCOMPLETE**")
    if (out / "config.json").is_file():  # a rerun without --resume is refused
        again = edgekd(["distill", *JOB, *inputs, "--out", out], env)
        assert again.returncode == 2 and "--resume" in again.stderr
    res = edgekd(["distill", *JOB, *inputs, "--out", out, "--resume"], env)
    assert res.returncode == 0, res.stderr
    assert (out / "student" / "model.safetensors").read_bytes() == (ref / "student" / "model.safetensors").read_bytes()
    rep, ref_rep = (json.loads((d / "report.json").read_text()) for d in (out, ref))
    assert rep["status"] == "complete" and _keys(rep) == _keys(ref_rep)
    assert rep["student"]["eval_loss"] == ref_rep["student"]["eval_loss"]
    assert rep["scratch"]["eval_loss"] == ref_rep["scratch"]["eval_loss"]
    assert rep["ce_only"]["eval_loss"] == ref_rep["ce_only"]["eval_loss"]
    job = rep["timings_s"]["job"]
    assert job["invocations"] == (1 if phase == "search" else 2)
    assert "search" in job and job["search"]["wall_s"] >= 0  # the first invocation's phases are kept
    if phase in ("distill", "scratch"):  # the engine itself ran twice
        assert rep["timings_s"]["invocations"] == 2 and rep["timings_s"]["distill"] > 0
    assert not list(out.glob("export/.*")) and not list(out.glob("checkpoints/*/.*tmp"))


def test_second_process_on_the_same_out_is_refused(inputs, env, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "distill", *JOB, *inputs, "--out", str(out)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not ((out / ".lock").is_file() and (out / ".lock").read_text().strip()) and time.time() < deadline:
            time.sleep(0.2)
        res = edgekd(["distill", *JOB, *inputs, "--out", out], env)
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another edgekd" in lines[0] and str(first.pid) in lines[0]
    finally:
        first.kill()
        first.wait()
    assert "Traceback" not in res.stderr
