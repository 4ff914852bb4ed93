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
    """T5 (not a family edgekd distils) is one line; a Marian it distils, with --target (no search or latency
    model for encoder-decoders yet), is one line too."""
    import torch
    from transformers import MarianConfig, MarianMTModel, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    T5ForConditionalGeneration(T5Config(vocab_size=300, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
                               ).save_pretrained(str(tmp_path / "t5"))
    MarianMTModel(MarianConfig(vocab_size=300, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, pad_token_id=2,
                               decoder_start_token_id=2, eos_token_id=0)).save_pretrained(str(tmp_path / "marian"))
    for extra in ([], ["--target", "android-arm64"]):
        line = _one_line_exit_2(_edgekd("distill", "--teacher", str(tmp_path / "t5"), "--steps", "2", *extra,
                                        "--out", str(tmp_path / f"run{len(extra)}"), tmp_path=tmp_path))
        assert "encoder-decoder teachers (t5) are not supported yet" in line and "marian" in line
    line = _one_line_exit_2(_edgekd("distill", "--teacher", str(tmp_path / "marian"), "--steps", "2", "--target",
                                    "android-arm64", "--out", str(tmp_path / "run_m"), tmp_path=tmp_path))
    assert "encoder-decoder" in line and "without --target" in line
