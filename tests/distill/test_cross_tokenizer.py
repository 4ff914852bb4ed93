"""A teacher and a student with different tokenizers, end to end from the CLI: the run re-tokenises every
batch for the teacher, reports the teacher's loss on the same held-out text, and says which tokens it shared."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig

from edgekd.data.tokenizer import train_tokenizer
from tests.distill.helpers import small_texts

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """A student of its own: a config and a 300-token BPE (the teacher's has 384), no weights."""
    d = tmp_path_factory.mktemp("student") / "s"
    tok = train_tokenizer(small_texts(12), vocab_size=300)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    cfg.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _cli(cwd, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "edgekd.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["uld", "token_align"])
def test_distil_into_a_student_with_another_tokenizer(teacher_dir, text_dir, student_dir, tmp_path, loss):
    r = _cli(tmp_path, "distill", "--teacher", str(teacher_dir), "--student", str(student_dir), "--data",
             str(text_dir), "--loss", loss, "--steps", "8", "--seq-len", "32", "--out", "run", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert rep["status"] == "complete"
    assert cfg["cross_tokenizer"]["teacher_vocab"] == 384 and cfg["cross_tokenizer"]["student_vocab"] == 300
    assert 0 < cfg["cross_tokenizer"]["shared_tokens"] <= 300
    t, s, c = rep["teacher"], rep["student"], rep["ce_only"]
    # the teacher's loss over the same text, per student token, beside its loss per its own tokens:
    # fewer, longer tokens of its own carry more nats each
    assert t["eval_tokens"] == s["eval_tokens"] and t["eval_tokens_own"] < t["eval_tokens"]
    assert t["eval_loss_own_tokens"] > t["eval_loss"] > 0
    assert t["top1_agreement"] is None and s["top1_agreement"] is None
    assert s["init"]["method"] == "random" and c["eval_loss"] > 0
    student = tmp_path / "run" / "student"
    assert json.loads((student / "config.json").read_text())["vocab_size"] == 300
    from edgekd.data.tokenizer import load_tokenizer

    assert len(load_tokenizer(student)) == 300  # the student keeps its own tokenizer


def test_another_tokenizer_without_a_cross_tokenizer_loss_is_one_line(teacher_dir, text_dir, student_dir, tmp_path):
    r = _cli(tmp_path, "distill", "--teacher", str(teacher_dir), "--student", str(student_dir), "--data",
             str(text_dir), "--steps", "2", "--seq-len", "32", "--out", "run", "--quiet")
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.startswith("edgekd: error")]
    assert len(lines) == 1 and "--loss uld" in lines[0] and "Traceback" not in r.stderr
