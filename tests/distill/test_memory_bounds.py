"""Bounded forwards: a large vocabulary's logits split training into micro-batches and evaluation into fewer
rows per forward, with the same results; the built-in runs keep whole batches."""

import importlib

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from edgekd.distill import memory
from edgekd.distill.evaluate import evaluate
from edgekd.models.builtin import RECIPE
from edgekd.models.published import PUBLISHED

from .test_run import _cfg

run_mod = importlib.import_module("edgekd.distill.run")  # the package's `run` is the function


def test_rows_per_forward_by_hand():
    gib = memory.FORWARD_BYTES
    assert memory.rows_per_forward(8, gib // 8) == 8
    assert memory.rows_per_forward(8, gib // 3) == 3
    assert memory.rows_per_forward(8, gib // 3, divisor=True) == 2
    assert memory.rows_per_forward(8, 2 * gib) == 1  # one row at least, even over the bound


def test_micro_batch_is_whole_for_the_builtin_and_split_for_real_vocabularies():
    assert memory.micro_batch(8, 256, RECIPE["config"], 4096) == 8
    # Qwen2.5-0.5B at 256 tokens: 3 logit buffers of 256 x 151,936 float32 are 467 MB, the layers' 367 MB
    q = PUBLISHED["qwen2.5-0.5b"]
    per_row = 3 * 256 * 151936 * 4 + 256 * 24 * (8 * 896 + 2 * 4864) * 4
    assert memory.micro_batch(8, 256, q, 151936) == memory.FORWARD_BYTES // per_row == 1
    # never more than MAX_ACCUMULATION micro-batches a step: a batch of 100,000 stays too large (and is refused)
    assert memory.micro_batch(100000, 256, q, 151936) == 12500


def test_split_evaluation_gives_the_same_numbers(monkeypatch):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    teacher, student = LlamaForCausalLM(cfg).eval(), LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 512, (8, 16))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}]
    whole = evaluate({"student": student}, teacher, batches)
    # room for 3 rows' logits per forward: 8 rows in forwards of 3, 3 and 2
    monkeypatch.setattr(memory, "FORWARD_BYTES", 3 * 16 * 512 * 4 * memory.EVAL_LOGIT_COPIES)
    split = evaluate({"student": student}, teacher, batches)
    for who in ("teacher", "student"):
        for k, v in whole[who].items():
            assert split[who][k] == pytest.approx(v, rel=1e-6), (who, k)


def test_run_trains_in_micro_batches_when_a_batch_would_not_fit(teacher_dir, text_dir, tmp_path, monkeypatch):
    """With no room for even one row per forward (the bound at 0 bytes), a batch of 4 trains as four
    micro-batches of 1 (the trainer's gradient accumulation) and evaluates a row at a time; config.json
    records the micro-batch; a run that sets --micro-batch-size keeps its own."""
    import json

    monkeypatch.setattr(memory, "FORWARD_BYTES", 0)
    out = tmp_path / "run"
    rep = run_mod.run(_cfg(teacher_dir, text_dir, out, steps=2, checkpoint_every=None, baselines="none")).report
    assert json.loads((out / "config.json").read_text())["train"]["micro_batch_size"] == 1
    assert rep["student"]["eval_loss"] > 0
    out2 = tmp_path / "run2"
    run_mod.run(_cfg(teacher_dir, text_dir, out2, steps=2, checkpoint_every=None, baselines="none", micro_batch_size=2))
    assert json.loads((out2 / "config.json").read_text())["train"]["micro_batch_size"] == 2
