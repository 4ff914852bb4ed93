"""--scheme multi_teacher with more teachers from --scheme-config '{"teachers": ["DIR", ...]}'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EDGEKD = str(Path(sys.executable).parent / "edgekd")


@pytest.fixture(scope="module")
def second_teacher(teacher_dir, tmp_path_factory):
    """Another teacher with the first one's config and tokenizer, other (random) weights."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = tmp_path_factory.mktemp("t2") / "t"
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(teacher_dir)).save_pretrained(str(d))
    for f in Path(teacher_dir).glob("tokenizer*"):
        shutil.copy(f, d / f.name)
    return d


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
                            batch_size=4, out=str(tmp_path / "run"), baselines="none", eval_blocks=2,
                            init_batches=1, quiet=True, torch_device="cpu")).out
    assert len(seen["teachers"]) == 2 and seen["kw"] == {"weights": [3, 1]}
    assert json.loads((out / "config.json").read_text())["scheme_config"]["teachers"] == [str(second_teacher)]


@pytest.mark.slow
def test_teacher_with_another_vocabulary_is_one_line_exit_2(teacher_dir, text_dir, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    other = tmp_path / "other"
    LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=64)).save_pretrained(str(other))
    res = subprocess.run([EDGEKD, "distill", "--teacher", str(teacher_dir), "--data", str(text_dir), "--scheme",
                          "multi_teacher", "--scheme-config", json.dumps({"teachers": [str(other)]}), "--steps", "2",
                          "--seq-len", "16", "--batch-size", "4", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "EDGEKD_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "vocabulary of 320 tokens" in lines[0] and "share one tokenizer" in lines[0]


def test_teachers_must_be_a_list_of_directories(teacher_dir):
    from edgekd.distill import DistillConfig
    from edgekd.distill.schemes import MultiTeacherScheme
    from edgekd.errors import EdgekdError
    from edgekd.models.loading import load_model

    t, _, _ = load_model(teacher_dir, with_tokenizer=False)
    cfg = DistillConfig(scheme="multi_teacher")
    with pytest.raises(EdgekdError, match="teachers must be a list"):
        MultiTeacherScheme.extra_teachers(cfg, t, "x")
    same = DistillConfig(teacher=str(teacher_dir), scheme="multi_teacher")
    assert len(MultiTeacherScheme.extra_teachers(same, t, [str(teacher_dir)])) == 1


def test_teacher_with_another_token_map_is_an_error(teacher_dir, second_teacher, tmp_path):
    """Same vocabulary size, different token -> id map: the teachers' logits mean different tokens."""
    import shutil

    from edgekd.distill import DistillConfig
    from edgekd.distill.schemes import MultiTeacherScheme
    from edgekd.errors import EdgekdError
    from edgekd.models.loading import load_model

    other = tmp_path / "swapped"
    shutil.copytree(second_teacher, other)
    tj = json.loads((other / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(tj))
    t, _, _ = load_model(teacher_dir, with_tokenizer=False)
    cfg = DistillConfig(teacher=str(teacher_dir), scheme="multi_teacher")
    with pytest.raises(EdgekdError, match="tokenizer differs"):
        MultiTeacherScheme.extra_teachers(cfg, t, [str(other)])
