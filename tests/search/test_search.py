"""The student search: the largest candidate under every limit, a clear error when none fits."""

from __future__ import annotations

import csv
import json
import re

import pytest

from edgekd.errors import EdgekdError
from edgekd.targets import cost_latency as lat
from edgekd.search import RAM_FRACTION, SearchResult, candidates, print_table, search_student
from edgekd.targets.spec import load_target

TEACHER = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=4)



def test_candidates_respect_the_family():
    cands = candidates(TEACHER)
    assert len(cands) > 20
    for c in cands:
        assert c["hidden_size"] % c["head_dim"] == 0
        assert c["hidden_size"] // c["head_dim"] == c["num_attention_heads"]
        assert c["num_attention_heads"] % c["num_key_value_heads"] == 0
        assert c["head_dim"] % 2 == 0  # RoPE rotates pairs
        assert c["num_hidden_layers"] <= 4 and c["hidden_size"] <= 256
        assert c["precision"] in ("float32", "int8")
    assert {c["num_hidden_layers"] for c in cands} == {1, 2, 3, 4}
    assert len({c["num_attention_heads"] for c in cands}) > 2 and len({c["intermediate_size"] for c in cands}) > 3
    gqa = candidates(dict(TEACHER, num_key_value_heads=2))
    assert any(c["num_key_value_heads"] < c["num_attention_heads"] for c in gqa)


def test_search_picks_largest_under_budget(tmp_path):
    target = load_target("raspberry-pi-5")
    all_ms = sorted(r["predicted_ms"] for r in search_student(TEACHER, target, {"latency_ms": 1e9}).table)
    budget = all_ms[len(all_ms) // 2]  # about half the candidates fit
    res = search_student(TEACHER, target, {"latency_ms": budget})
    print_table(res)
    files = res.save(tmp_path)
    fitting = [r for r in res.table if r["predicted_ms"] <= budget and r["size_mb"] <= target.budget["max_model_mb"]
               and r["peak_mem_mb"] <= target.memory["ram_mb"] * RAM_FRACTION]
    best = max(r["params"] for r in fitting)
    row = res.choice_row
    assert row["params"] == best and row["predicted_ms"] <= budget
    assert sum(r["chosen"] for r in res.table) == 1
    assert any(r["params"] > best for r in res.table)  # the budget really excluded bigger ones
    # the choice applies to the teacher's config and predicts what the table says
    cfg = res.student_config(TEACHER)
    assert "precision" not in cfg and cfg["vocab_size"] == TEACHER["vocab_size"]
    assert lat.predict(cfg, target, 64, res.choice["precision"]).total_ms == pytest.approx(row["predicted_ms"], rel=1e-3)
    # saved artefacts
    assert (tmp_path / "search.png").stat().st_size > 1000
    assert (tmp_path / "search.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((tmp_path / "candidates.csv").open()))
    assert len(rows) == len(res.table)
    saved = json.loads((tmp_path / "candidates.json").read_text())
    assert saved["choice"] == res.choice and saved["latency_budget_ms"] == budget
    assert files == {"csv": tmp_path / "candidates.csv", "json": tmp_path / "candidates.json",
                     "plot": tmp_path / "search.png"}
    assert SearchResult.load(tmp_path) == res


def test_load_of_a_corrupt_search_is_one_line(tmp_path):
    (tmp_path / "candidates.json").write_text("{not json")
    with pytest.raises(EdgekdError, match="corrupt"):
        SearchResult.load(tmp_path)


def test_max_params_asks_for_a_strictly_smaller_student():
    target = load_target("raspberry-pi-5")
    first = search_student(TEACHER, target, {"latency_ms": 1e9})
    smaller = search_student(TEACHER, target, {"latency_ms": 1e9}, max_params=first.choice_row["params"])
    assert smaller.choice_row["params"] < first.choice_row["params"]
    assert all("max_params" in r["fails"] for r in smaller.table if r["params"] >= first.choice_row["params"])
    tiniest = min(r["params"] for r in first.table)
    with pytest.raises(EdgekdError, match="no student smaller than"):
        search_student(TEACHER, target, {"latency_ms": 1e9}, max_params=tiniest)


def test_budget_defaults_to_target_and_size_limit_applies():
    target = load_target("raspberry-pi-5")
    res = search_student(TEACHER, target)
    assert res.latency_budget_ms == target.budget["latency_ms"]
    # a tiny max_model_mb rules out float32 students bigger than it
    small = type(target)(target.name, target.description, target.path,
                         {**target.data, "budget": {**target.budget, "max_model_mb": 3.0}})
    res = search_student(TEACHER, small, {"latency_ms": 1e9})
    assert res.choice_row["size_mb"] <= 3.0
    assert any(r["fails"] == "size" for r in res.table)


def test_nothing_fits_names_the_fastest_narrowing():
    """The nearest candidate the teacher can initialise, with its predicted time: the budget it would need."""
    target = load_target("raspberry-pi-5")
    table = search_student(TEACHER, target, {"latency_ms": 1e9}).table
    fastest = min((r for r in table if "narrowing" not in r["fails"]), key=lambda r: r["predicted_ms"])
    with pytest.raises(EdgekdError) as e:
        search_student(TEACHER, target, {"latency_ms": 0.001})
    msg = str(e.value)
    assert "raspberry-pi-5" in msg and "0.001 ms" in msg and "--latency-budget" in msg
    assert f"predicted at {fastest['predicted_ms']:.2f} ms" in msg
    assert re.search(rf"the nearest, {fastest['num_hidden_layers']} layers, hidden {fastest['hidden_size']},", msg)


def test_calibration_is_an_explicit_input():
    """A calibration saved in the cache is not used unless passed: None means the datasheet priors."""
    target = load_target("raspberry-pi-5")
    uncal = search_student(TEACHER, target, {"latency_ms": 1e9})
    cfg = {**TEACHER, "num_hidden_layers": 1}
    p = lat.predict(cfg, target, 64).total_ms
    saved = lat.calibrate([{"config": cfg, "seq_len": 64, "precision": "float32", "measured_ms": 3 * p}], target)
    saved.save()
    assert search_student(TEACHER, target, {"latency_ms": 1e9}) == uncal
    cal = search_student(TEACHER, target, {"latency_ms": 1e9}, calibration=saved)
    assert cal.calibrated and not uncal.calibrated
    assert cal.predicted_ms > uncal.predicted_ms


def test_ram_limit_applies():
    target = load_target("raspberry-pi-5")
    # room for the runtime and a few MB of weights only
    small = type(target)(target.name, target.description, target.path,
                         {**target.data, "memory": {**target.memory, "ram_mb": 2 * 22.0}})
    res = search_student(TEACHER, small, {"latency_ms": 1e9})
    assert res.choice_row["peak_mem_mb"] <= 22.0
    assert any("ram" in r["fails"] for r in res.table)
