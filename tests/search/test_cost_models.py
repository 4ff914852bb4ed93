"""The one cost-model interface: both models implement it, the search runs any registered one, and a
GQA teacher gets only students its weights can initialise (issue 24 item 6)."""

from __future__ import annotations

import inspect
from typing import Mapping, Optional

import pytest

from edgekd.errors import EdgekdError
from edgekd.models.arch import narrowing_problem
from edgekd.search import OVERRIDE_KEYS, search_student
from edgekd.targets import COST_MODELS, CostModel, get_cost_model, register_cost_model
from edgekd.targets.cost_latency import LatencyModel
from edgekd.targets.spec import load_target

QWEN_LIKE = dict(model_type="qwen2", vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2)


def test_both_models_implement_every_method():
    assert {"latency", "generation"} <= set(COST_MODELS)
    abstract = {n for n, f in inspect.getmembers(CostModel) if getattr(f, "__isabstractmethod__", False)}
    for m in COST_MODELS.values():
        assert not (abstract & set(getattr(type(m), "__abstractmethods__", ()))), m.name
        assert set(m.budget_keys) <= set(m.budget_options) and m.length_keys
    with pytest.raises(EdgekdError, match="unknown cost model 'nope'; known: "):
        get_cost_model("nope")


@pytest.mark.parametrize("model", ["latency", "generation"])
def test_gqa_teacher_gets_only_narrowings(model):
    """4 query / 2 KV heads: every candidate the search may choose has at most 2 KV heads and groups of at
    most 2, so the teacher's weights initialise it; the others say why not, per candidate."""
    res = search_student(QWEN_LIKE, "raspberry-pi-5", {}, cost_model=model)
    for r in res.table:
        problem = narrowing_problem(QWEN_LIKE, {**QWEN_LIKE, **{k: r[k] for k in OVERRIDE_KEYS}})
        assert ("narrowing" in r["fails"].split(",")) == (problem is not None)
        assert r.get("not_narrowing") == problem
    chosen = res.choice_row
    assert chosen["num_key_value_heads"] <= 2 and chosen["num_attention_heads"] // chosen["num_key_value_heads"] <= 2
    assert all("narrowing" in r["fails"] for r in res.table if r["num_key_value_heads"] > 2)
    assert any(r["fits"] for r in res.table if r["num_key_value_heads"] < r["num_attention_heads"])


class HalfLatency(LatencyModel):
    """A third cost model for the test: the latency model's numbers, halved (a faster runtime)."""

    name = "half-latency-test"

    def predict_row(self, config: Mapping, t, precision: str, budget: Mapping, calibration,
                    threads: Optional[int], fmt: str) -> dict:
        row = super().predict_row(config, t, precision, budget, calibration, threads, fmt)
        return row | {"predicted_ms": row["predicted_ms"] / 2}


def test_a_new_cost_model_is_one_class_and_one_registration():
    target = load_target("raspberry-pi-5")
    register_cost_model(HalfLatency())
    try:
        plain = search_student(QWEN_LIKE, target, {"latency_ms": 5.0})
        half = search_student(QWEN_LIKE, target, {"latency_ms": 5.0}, cost_model="half-latency-test")
    finally:
        del COST_MODELS["half-latency-test"]
    assert half.cost_model == "half-latency-test" and half.choice_row["params"] >= plain.choice_row["params"]
    by_arch = {tuple(r[k] for k in (*OVERRIDE_KEYS, "precision")): r for r in plain.table}
    for r in half.table:
        assert r["predicted_ms"] == pytest.approx(by_arch[tuple(r[k] for k in (*OVERRIDE_KEYS, "precision"))]
                                                  ["predicted_ms"] / 2, abs=1e-4)
