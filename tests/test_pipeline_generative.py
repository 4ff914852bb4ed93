"""The generative job (`edgekd distill --target` with a causal-LM teacher, the default): the search on
the generation budget, litert-lm and onnx-genai exports with generation parity, generation profiles,
report.json's `generation`, report.md's table and plot, and recalibrate-and-shrink on `host`."""

from __future__ import annotations

import json
import math
import sys

import pytest

from tests.distill.helpers import tiny_teacher
from tests.test_pipeline import _cache, cli, data  # noqa: F401  (fixtures: a throwaway cache, the corpus)

TEACHER = dict(hidden_size=128, heads=8, layers=4, intermediate_size=256, max_positions=256, train_steps=20)
JOB = ["--steps", "6", "--seq-len", "32", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("teacher") / "t", **TEACHER)


def _run_job(teacher, data, out, *extra):
    from edgekd.cli import main

    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["edgekd", "distill", "--target", "android-arm64", "--teacher", str(teacher),
                             "--data", str(data), "--out", str(out), *extra, *JOB])
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code
    finally:
        mp.undo()
    return out


@pytest.fixture(scope="module")
def job(teacher, data, tmp_path_factory):
    """`edgekd distill --target android-arm64` on a causal-LM teacher, through the CLI, with a decode budget only
    an int4 student of this teacher meets (its float candidates of the same size are predicted at ~4,500 tok/s,
    int4 at ~6,400): the student ships quantised, so the job distils it quantisation-aware too."""
    return _run_job(teacher, data, tmp_path_factory.mktemp("job") / "run", "--decode-tok-s", "6300")


@pytest.mark.slow
def test_generative_job_exports_profiles_and_reports(job):
    rep = json.loads((job / "report.json").read_text())
    gen = rep["generation"]
    b = gen["budget"]
    assert rep["status"] == "complete" and gen["format"] == "litert-lm" and gen["runtime"] == "litert-lm"
    table = json.loads((job / "search" / "candidates.json").read_text())
    chosen = [r for r in table["candidates"] if r["chosen"]]
    assert len(chosen) == 1 and gen["predicted"]["decode_tok_s"] == pytest.approx(chosen[0]["decode_tok_s"], rel=1e-3)
    assert gen["meets_budget_predicted"] and gen["precision"] == chosen[0]["precision"] == rep["search"]["choice"]["precision"]
    assert rep["student"]["params"] == chosen[0]["params"] < rep["teacher"]["params"]
    # float and the searched precision, in both runtimes, each passed generation parity
    expected = {"litert-lm", "onnx-genai"} | ({f"litert-lm-{gen['precision']}", f"onnx-genai-{gen['precision']}"}
                                             if gen["precision"] != "float32" else set())
    assert set(rep["exports"]) == expected
    for key, e in rep["exports"].items():
        assert e["passed"], (key, e)
        assert (job / e["path"]).exists() and e["recipe"] and e["tokens_match_share"] is not None, key
        if e["precision"] == "float32":
            assert e["tokens_match_share"] == 1.0, key
        record = json.loads((job / (e["path"] + ".json")).read_text())
        assert record["passed"] and record["run"]["new_tokens"] >= 32
    assert (job / "export" / "student.litertlm").is_file() and (job / "export" / "student-genai" / "genai_config.json").is_file()
    # each kept file's own quality in its runtime on the report's held-out blocks, beside PyTorch float's on them
    from edgekd.export.parity import QUALITY_BLOCKS

    blocks = min(QUALITY_BLOCKS, rep["student"]["eval_tokens"] // 31)  # --seq-len 32: whole blocks (< the cache)
    on = {"blocks": blocks, "window": 32, "tokens": blocks * 31}
    pytorch = rep["exports"]["litert-lm"]["pytorch_float"]
    for key, e in rep["exports"].items():
        assert {k: e["quality_on"][k] for k in on} == on and e["quality_on"]["seconds"] > 0, key
        assert e["perplexity"] == pytest.approx(math.exp(e["eval_loss"])) and 0 <= e["top1_agreement_teacher"] <= 1
        assert e["pytorch_float"] == pytorch and e["eval_loss_vs_pytorch"] == pytest.approx(e["eval_loss"] - pytorch["eval_loss"])
        if e["precision"] == "float32":
            assert abs(e["eval_loss_vs_pytorch"]) < 1e-4 and e["top1_agreement_pytorch"] >= 0.99, key
    # PyTorch float on those blocks scores as the engine's evaluation of the whole held-out set, within sampling
    assert pytorch["eval_loss"] == pytest.approx(rep["student"]["eval_loss"], rel=0.2)
    # every passing export was timed generating here, at the budget's lengths
    assert len(gen["measured"]) == len(rep["exports"])
    for m in gen["measured"]:
        assert m["device"] == "local" and (m["prompt_len"], m["decode_len"]) == (b["prompt_len"], b["decode_len"])
        assert m["decode_tok_s"] > 0 and m["ttft_ms"] > 0 and m["prefill_tok_s"] > 0
        prof = json.loads((job / m["profile"]).read_text())
        assert prof["decode_tok_s"]["median"] == m["decode_tok_s"] and prof["runs"] == 3
    assert gen["measured_on_target"] is None and gen["meets_budget_measured"] is None  # adb target, --device local
    assert rep["latency"]["metric"] == "ttft_ms" and rep["latency"]["predicted_ms"] == gen["predicted"]["ttft_ms"]
    from edgekd.report import ENGINE_KEYS, JOB_KEYS, missing_keys

    assert missing_keys(rep, ENGINE_KEYS) == [] and missing_keys(rep, JOB_KEYS) == []
    md = (job / "report.md").read_text()
    assert "plots/generation.png" in md and "decode (tok/s)" in md and "Generation parity" in md
    shipped = f"litert-lm-{gen['precision']}" if gen["precision"] != "float32" else "litert-lm"
    assert f"The file that ships, {shipped} (`{rep['exports'][shipped]['path']}`), run in ai_edge_litert" in md
    assert md.count(" file in ") == len(rep["exports"]) and "distilled student, PyTorch float (on the files' tokens) †" in md
    assert (job / "plots" / "generation.png").stat().st_size > 1000


@pytest.mark.slow
def test_quantised_files_are_built_from_quant_aware_students(job):
    """Each quantised export is built from its QAD student (weights a fixed point of the runtime's quantiser),
    held to that PyTorch fake-quant model's greedy tokens, and measured beside the float student quantised after
    training (export/ptq/), in the same runtime on the same tokens (distillation.quant_aware)."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgekd.export.parity import GEN_QAD_MIN_MATCH
    from edgekd.quant import quantized_modules
    from edgekd.quant.fake_quant import BY_NAME, dequantize

    rep = json.loads((job / "report.json").read_text())
    p = rep["generation"]["precision"]
    assert p == "int4" and rep["status"] == "complete"
    qa = rep["distillation"]["quant_aware"]
    assert set(qa["by_export"]) == {f"litert-lm-{p}", f"onnx-genai-{p}"} and qa["shipped"] == f"litert-lm-{p}"
    for k in ("precision", "recipe", "steps", "float", "ptq", "qad"):  # DESIGN.md's keys, of the file that ships
        assert qa[k] == qa["by_export"][qa["shipped"]][k], k
    for key, r in qa["by_export"].items():
        e, flt = rep["exports"][key], rep["exports"][r["format"]]
        assert e["passed"] and e["model_dir"] == r["model_dir"] == f"qad/{key}" and r["precision"] == p
        model = AutoModelForCausalLM.from_pretrained(job / r["model_dir"])
        recipe = BY_NAME[r["recipe_name"]]
        for name, m in quantized_modules(model, recipe):
            assert torch.equal(dequantize(m.weight, recipe), m.weight.float()), (key, name)
        record = json.loads((job / (e["path"] + ".json")).read_text())
        assert record["threshold"]["tokens_match_share"] == GEN_QAD_MIN_MATCH
        assert record["run"]["reference"].startswith("the quantisation-aware student")
        assert e["prompts_matched"] >= GEN_QAD_MIN_MATCH * e["prompts"] and e["prompts"] == 8
        assert set(e["vs_float"]) >= {"tokens_match_share", "ppl_ratio", "top1_agreement_decisive"}
        assert e["eval_loss_vs_quant_aware"] == pytest.approx(e["eval_loss"] - e["pytorch_quant_aware"]["eval_loss"])
        ptq = e["ptq"]
        assert ptq["path"].startswith("export/ptq/")
        if ptq["passed"]:
            assert (job / ptq["path"]).exists() and ptq["pytorch_float"] == e["pytorch_float"]
        assert (r["float"]["eval_loss"], r["ptq"]["eval_loss"], r["qad"]["eval_loss"]) == \
            (flt["eval_loss"], ptq.get("eval_loss"), e["eval_loss"])
        loss = {k: r[k]["eval_loss"] for k in ("float", "ptq", "qad")}
        if loss["ptq"] is not None and loss["ptq"] > loss["float"]:
            assert r["gap_closed"] == pytest.approx((loss["ptq"] - loss["qad"]) / (loss["ptq"] - loss["float"]))
        assert r["qad"]["prompts_matched"] == e["prompts_matched"] and r["measured_in"] == e["quality_on"]["runtime"]
    md = (job / "report.md").read_text()
    assert "### Quantisation-aware distillation" in md and "it was built from the quantisation-aware student" in md
    assert md.count("its quantisation-aware student, PyTorch fake-quant") == 2
    assert not any(m.get("path", "").startswith("export/ptq") for m in rep["generation"]["measured"])


@pytest.mark.slow
def test_generative_flags_are_checked_before_work(teacher, data, tmp_path, monkeypatch, capsys):
    for args, needle in ((["--latency-budget", "3"], "--latency-budget is not a budget of the generation job"),
                         (["--decode-tok-s", "0"], "--decode-tok-s must be"),
                         (["--logits", "--ttft-ms", "5"], "--ttft-ms is not a budget of the latency job"),
                         (["--runtime", "tflite"], "--runtime tflite: the generation job runs litert-lm or onnx-genai"),
                         (["--logits", "--runtime", "onnx-genai"], "--runtime onnx-genai: the latency job runs its "
                                                                   "target file runtime only")):
        code, _, err = cli(monkeypatch, capsys, "distill", "--target", "android-arm64", "--teacher", teacher,
                           "--data", data, "--out", tmp_path / "run", *args, *JOB)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run" / "config.json").exists()
    code, _, err = cli(monkeypatch, capsys, "distill", "--target", "android-arm64", "--decode-tok-s", "1",
                       "--ttft-ms", "1e4", "--no-quant-aware", "--teacher", teacher, "--data", data, "--out",
                       tmp_path / "float", *JOB)
    assert code == 2 and "--no-quant-aware" in err and "float32" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "float" / "config.json").exists()
    code, _, err = cli(monkeypatch, capsys, "distill", "--no-quant-aware", "--teacher", teacher, "--data", data,
                       "--out", tmp_path / "engine", *JOB)
    assert code == 2 and "--quant-aware/--no-quant-aware goes with --target" in err, err
    code, _, err = cli(monkeypatch, capsys, "distill", "--target", "android-arm64", "--decode-tok-s", "1e9",
                       "--teacher", teacher, "--data", data, "--out", tmp_path / "run", *JOB)
    assert code == 2 and "no student meets" in err and "tok/s" in err, err


@pytest.mark.slow
def test_measured_generation_miss_recalibrates_and_shrinks(teacher, data, tmp_path):
    """On `host` the device is this machine. A generation model that thinks it is 100x faster picks the
    largest student; the measured decode rate misses the budget, recalibrates the model from the
    measurement, and the job distills a strictly smaller student."""
    from dataclasses import replace

    from edgekd.distill import DistillConfig
    from edgekd.errors import JobFailed
    from edgekd.pipeline import JobConfig, distill_for_target
    from edgekd.targets import load_target, measure_target
    from edgekd.targets.cost_generation import default_calibration

    base = default_calibration(measure_target(load_target("host")), "onnx-genai")
    optimistic = replace(base, eff_mem=base.eff_mem * 100, layer_overhead_us=0.01, token_overhead_us=0.01,
                         call_overhead_ms=0.001, eff_prefill={k: v * 100 for k, v in base.eff_prefill.items()})
    out = tmp_path / "run"
    try:
        distill_for_target(JobConfig(DistillConfig(teacher=str(teacher), data=str(data), out=str(out), steps=4,
                                                   seq_len=32, batch_size=4, eval_blocks=4, quiet=True, threads=1),
                                     target="host", decode_tok_s=50000, calibration=optimistic, max_shrinks=1))
        missed = False
    except JobFailed as e:
        assert "missed the generation budget" in str(e)
        missed = True
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == ("failed" if missed else "complete")
    attempts = rep["search"]["attempts"]
    first = attempts[0]
    assert "decode_tok_s" in first["misses"] and first["measured"]["decode_tok_s"] < 50000
    assert first["predicted"]["decode_tok_s"] >= 50000  # the optimistic model's choice
    cal = json.loads((out / "search" / "calibration.json").read_text())
    assert cal["fmt"] == "onnx-genai" and cal["n_measurements"] >= 1
    # the recalibrated model now predicts the measured student's decode rate (it was 50x too fast)
    from edgekd.targets.cost_generation import GenerationCalibration, predict

    cfg = {**json.loads((teacher / "config.json").read_text()), **{k: v for k, v in first["choice"].items()
                                                                  if k != "precision"}}
    again = predict(cfg, measure_target(load_target("host")), first["choice"]["precision"], 64, 128,
                               GenerationCalibration.from_dict(cal), fmt="onnx-genai")
    assert abs(again.decode_tok_s / first["measured"]["decode_tok_s"] - 1) < 0.5
    assert rep["calibration"]["source"] == "given" and "recalibrated" in rep["calibration"]
    if len(attempts) == 2:  # the recalibrated model still found a smaller student it predicts to fit
        second = attempts[1]
        assert second["params"] < first["params"] and second["calibrated"]
        assert (out / "attempts" / "0" / "export" / "student-genai" / "genai_config.json").is_file()
        assert rep["generation"]["measured_on_target"] == second["measured"]
    else:  # the measurement showed that nothing the family offers reaches 50k tok/s here: said, not hidden
        assert "no student meets" in rep["latency"]["shrink_stopped"] and missed
