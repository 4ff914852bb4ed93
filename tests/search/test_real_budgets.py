"""Target budgets made for real LLMs (issue 25 item 1): the teachers people bring, by their published
config values, get a student under every target's default generation budget, and the built-in teacher
keeps its own demo budget."""

from __future__ import annotations

import pytest

from edgekd.models.arch import param_count
from edgekd.models.builtin import demo_budget
from edgekd.models.published import PUBLISHED
from edgekd.search import search_student
from edgekd.targets import known_targets, load_target, measure_target

QWEN25_05B, LLAMA32_1B, QWEN25_15B = (PUBLISHED[k] for k in ("qwen2.5-0.5b", "llama3.2-1b", "qwen2.5-1.5b"))


@pytest.mark.parametrize("teacher", [QWEN25_05B, LLAMA32_1B, QWEN25_15B], ids=["qwen2.5-0.5b", "llama3.2-1b", "qwen2.5-1.5b"])
@pytest.mark.parametrize("target", ["raspberry-pi-5", "android-arm64-flagship"])
def test_real_teachers_get_a_student_under_default_budgets(teacher, target):
    res = search_student(teacher, target, {}, cost_model="generation")
    chosen, budget = res.choice_row, load_target(target).generation_budget
    assert res.budget["decode_tok_s"] == budget["decode_tok_s"] and res.budget["ttft_ms"] == budget["ttft_ms"]
    assert chosen["decode_tok_s"] >= budget["decode_tok_s"] and chosen["ttft_ms"] <= budget["ttft_ms"]
    # a model worth running: tens of millions of parameters at least, smaller than the teacher
    assert 2e7 < chosen["params"] < param_count(teacher), chosen


def test_every_target_budget_is_a_real_models_and_cites_its_source():
    for name in known_targets():
        t = measure_target(load_target(name)) if name == "host" else load_target(name)
        b = t.generation_budget
        assert 1 <= b["decode_tok_s"] <= 100 and 100 <= b["ttft_ms"] <= 20000, name
        assert "https://" in open(t.path).read().split("[budget]")[1], f"{name}: the budget names no source"
        demo = demo_budget("generation", name)
        assert demo and demo["decode_tok_s"] > 100 * b["decode_tok_s"], name  # the ~5M toy decodes thousands


def test_far_budget_says_what_is_feasible():
    """A budget no student meets names the nearest student and its predicted numbers: the budget it needs."""
    from edgekd.errors import EdgekdError

    with pytest.raises(EdgekdError) as e:
        search_student(QWEN25_15B, "raspberry-pi-4", {"decode_tok_s": 5000}, cost_model="generation")
    msg = str(e.value)
    assert "the nearest" in msg and "tok/s decode" in msg and "--decode-tok-s" in msg and "\n" not in msg


def test_search_keeps_to_what_this_machine_can_train(monkeypatch):
    """android-arm64-flagship's budget alone takes a 1.36B student from Qwen2.5-1.5B, which with AdamW
    (16 bytes a parameter) and the teacher does not train in 24 GB: the job's memory bound stops it."""
    from edgekd.distill import memory

    free = 24 * 2**30
    monkeypatch.setattr(memory, "available_bytes", lambda device: free)
    limit = memory.trainable_params(QWEN25_15B, batch=8, seq_len=256, device="cpu", micro=8)
    # by hand: teacher float32, the teacher-shaped activations and three logit buffers of 8 x 256 tokens
    tokens, h, f, L, V = 8 * 256, 1536, 8960, 28, 151936
    fixed = 4 * param_count(QWEN25_15B) + 4 * tokens * L * (8 * h + 2 * f) + 3 * 4 * tokens * V
    usable = int(free / memory.JOB_OVERHEAD)  # what a job holds above the floor, measured
    assert limit == (usable - fixed) // 16
    # where the run does not set its micro-batch it trains one 256-token row at a time (Qwen's logits alone are
    # 467 MB a row), so more student fits
    assert memory.micro_batch(8, 256, QWEN25_15B, 151936) == 1
    assert memory.trainable_params(QWEN25_15B, batch=8, seq_len=256, device="cpu") == \
        (usable - (fixed - 7 * (fixed - 4 * param_count(QWEN25_15B)) // 8)) // 16
    free_only = search_student(QWEN25_15B, "android-arm64-flagship", {}, cost_model="generation")
    bound = search_student(QWEN25_15B, "android-arm64-flagship", {}, cost_model="generation", train_params=limit)
    assert free_only.choice_row["params"] > limit >= bound.choice_row["params"] > 2e7
    over = [r for r in bound.table if r["params"] > limit]
    assert over and all("train_memory" in r["fails"].split(",") for r in over)
    # what the memory held back, for the report: the largest the budget allowed, the one the free-only search chose
    assert free_only.held_back is None and bound.held_back["params"] == free_only.choice_row["params"]
