"""The teachers users bring, through the real CLI: what edgekd cannot do yet is one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EDGEKD = str(Path(sys.executable).parent / "edgekd")


def _edgekd(*args, tmp_path):
    env = {**os.environ, "EDGEKD_CACHE": str(tmp_path / "cache")}
    return subprocess.run([EDGEKD, *args], capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))


def _one_line_exit_2(res) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    return lines[0]


def test_target_with_student_is_one_line_error(tmp_path):
    (tmp_path / "s.json").write_text('{"num_hidden_layers": 1}')
    line = _one_line_exit_2(_edgekd("distill", "--target", "android-arm64", "--student", str(tmp_path / "s.json"),
                                    "--steps", "2", "--out", str(tmp_path / "run"), tmp_path=tmp_path))
    assert "--student" in line and "--target" in line and "drop one" in line
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow
def test_encoder_decoder_teacher_is_one_line_error(tmp_path):
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=300, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32)
    BartForConditionalGeneration(cfg).save_pretrained(str(tmp_path / "bart"))
    for extra in ([], ["--target", "android-arm64"]):
        line = _one_line_exit_2(_edgekd("distill", "--teacher", str(tmp_path / "bart"), "--steps", "2", *extra,
                                        "--out", str(tmp_path / f"run{len(extra)}"), tmp_path=tmp_path))
        assert "encoder-decoder teachers (bart) are not supported yet" in line
