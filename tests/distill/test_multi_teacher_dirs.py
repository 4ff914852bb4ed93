"""--scheme multi_teacher with more teachers from --scheme-config '{"teachers": ["DIR", ...]}'."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distill.helpers import tiny_teacher

EDGEKD = str(Path(sys.executable).parent / "edgekd")


@pytest.fixture(scope="module")
def second_teacher(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("t2") / "t", train_steps=0, seed=1)


@pytest.mark.slow
def test_teachers_from_scheme_config_are_loaded_and_mixed(teacher_dir, second_teacher, text_dir, tmp_path,
                                                          monkeypatch):
    import edgekd.distill.schemes as schemes
    from edgekd.distill import DistillConfig, run

    seen = {}
    real = schemes.build_scheme

    def spy(name, *, teachers=(), student, **kw):
        seen["teachers"], seen["kw"] = list(teachers), kw
        return real(name, teachers=teachers, student=student, **kw)

    monkeypatch.setattr(schemes, "build_scheme", spy)
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    out = run(DistillConfig(teacher=str(teacher_dir), data=str(text_dir), scheme="multi_teacher",
                            scheme_config={"teachers": [str(second_teacher)], "weights": [3, 1]}, steps=2, seq_len=16,
                            batch_size=4, out=str(tmp_path / "run"), scratch=False, eval_blocks=2,
                            calibration_batches=1, quiet=True, compute="cpu"))
    assert len(seen["teachers"]) == 2 and seen["kw"] == {"weights": [3, 1]}
    assert json.loads((out / "config.json").read_text())["scheme_config"]["teachers"] == [str(second_teacher)]


@pytest.mark.slow
def test_teacher_with_another_vocabulary_is_one_line_exit_2(teacher_dir, text_dir, tmp_path):
    from edgekd.models.tiny import make_tiny_teacher
    from tests.distill.helpers import small_texts

    other = make_tiny_teacher(tmp_path / "other", small_texts(), vocab_size=320, train_steps=0)
    cfg = json.dumps({"teachers": [str(other)]})
    res = subprocess.run([EDGEKD, "distill", "--teacher", str(teacher_dir), "--data", str(text_dir), "--scheme",
                          "multi_teacher", "--scheme-config", cfg, "--steps", "2", "--seq-len", "16", "--batch-size",
                          "4", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "EDGEKD_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "vocabulary" in lines[0] and "share one tokenizer" in lines[0]
    bad = subprocess.run([EDGEKD, "distill", "--teacher", str(teacher_dir), "--data", str(text_dir), "--scheme",
                          "multi_teacher", "--scheme-config", '{"teachers": "x"}', "--steps", "2", "--out",
                          str(tmp_path / "run2")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "teachers must be a list" in bad.stderr and "Traceback" not in bad.stderr
