"""Quantisation-aware distillation in the engine (edgekd.distill.quant_aware): the recipes it takes, the student
it saves (on the runtime's grid), what report.json says of it; and XNNPACK's run-time activation quantisation."""

from __future__ import annotations

import json

import pytest
import torch

from edgekd.errors import EdgekdError
from edgekd.quant.fake_quant import BY_NAME, dequantize, int8_rows


@pytest.mark.parametrize("given,needle", [(["onnx-genai:int3"], "is not a runtime's quantisation recipe"),
                                           (["litert-lm:none"], "is float"),
                                           (["tflite:int8"], "is not a runtime's quantisation recipe")])
def test_unknown_recipes_are_one_line(given, needle):
    from edgekd.distill.quant_aware import recipe_keys

    with pytest.raises(EdgekdError, match=needle) as e:
        recipe_keys(given)
    assert "onnx-genai:int4" in str(e.value) and "\n" not in str(e.value)


def test_int8_rows_is_asymmetric_per_row_and_keeps_zero():
    torch.manual_seed(0)
    x = torch.randn(5, 96) * torch.tensor([0.01, 1.0, 30.0, 1.0, 1.0])[:, None]
    x[3] = x[3].abs() + 2.0   # all positive: the range widened to hold 0
    x[4, :48] = 0.0
    got = int8_rows(x)
    lo, hi = x.amin(1).clamp(max=0), x.amax(1).clamp(min=0)
    scale = (hi - lo) / 255
    assert ((got - x).abs() <= scale[:, None] * 0.5 + 1e-6 * x.abs().amax(1, keepdim=True)).all()
    assert (got[4, :48] == 0).all()                        # zero is exactly representable
    levels = torch.round((got - got.amin(1, keepdim=True)) / scale[:, None])
    assert torch.allclose(levels * scale[:, None] + got.amin(1, keepdim=True), got, atol=1e-5 * 30)
    assert all(len(torch.unique(levels[i])) <= 256 for i in range(5))
    assert torch.equal(int8_rows(torch.zeros(2, 8)), torch.zeros(2, 8))


def test_engine_saves_each_recipes_student_on_its_grid(tmp_path):
    """A run with quant_aware: RUN/qad/KEY per recipe, every quantised weight a fixed point of the runtime's
    quantiser, report.json's distillation.quant_aware with the curve's first point (the float student through
    the recipe: PTQ in PyTorch) and the PyTorch fake-quant numbers after QAD."""
    from transformers import AutoModelForCausalLM

    from edgekd.distill import DistillConfig, run
    from edgekd.quant import quantized_modules

    out = tmp_path / "run"
    r = run(DistillConfig(out=str(out), steps=6, qad_steps=3, student={"num_hidden_layers": 1},
                          quant_aware=["litert-lm:int4", "onnx-genai:int4", "litert-lm:int4"], baselines="none",
                          eval_blocks=4, seq_len=64, quiet=True))
    qa = r.report["distillation"]["quant_aware"]["by_export"]
    assert list(qa) == ["litert-lm-int4", "onnx-genai-int4"]  # duplicates dropped, order kept
    assert set(r.quant_aware) == set(qa)
    saved = json.loads((out / "config.json").read_text())
    assert saved["quant_aware"] == ["litert-lm:int4", "onnx-genai:int4"] and saved["qad_steps"] == 3
    for key, rec in qa.items():
        assert rec["steps"] == 3 and rec["model_dir"] == f"qad/{key}" and r.quant_aware[key] == out / "qad" / key
        assert rec["pytorch_before_qad"] > 0 and rec["pytorch"]["eval_loss"] > 0
        recipe = BY_NAME[rec["recipe_name"]]
        model = AutoModelForCausalLM.from_pretrained(out / "qad" / key)
        mods = quantized_modules(model, recipe)
        assert mods
        for name, m in mods:
            assert torch.equal(dequantize(m.weight, recipe), m.weight.float()), name
        assert (out / "qad" / key / "tokenizer.json").is_file()
    # the float student is the run's student: not moved onto any grid
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    w = student.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(dequantize(w, BY_NAME[qa["onnx-genai-int4"]["recipe_name"]]), w)
    assert set(r.report["timings_s"]) >= {"qad-litert-lm-int4", "qad-onnx-genai-int4"}


def test_engine_refuses_qad_for_a_classifier(tmp_path):
    from edgekd.distill.quant_aware import check_config

    with pytest.raises(EdgekdError, match="causal LMs' generative exports"):
        check_config(["onnx-genai:int4"], None, "sequence-classifier")
    with pytest.raises(EdgekdError, match="--qad-steps"):
        check_config([], 0, None)


@pytest.mark.parametrize("fmt", ["litert-lm", "onnx-genai"])
def test_a_snapped_model_runs_as_its_fake_quant_model_without_requantising(fmt):
    """weights=False on a model on its grid: the same logits as the full fake-quant model (its weights are a
    fixed point), so the reference and the evaluation need not requantise every weight in every forward."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekd.quant import quant_aware, recipe_for_export, snap_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    recipe = recipe_for_export(fmt, "int4", cfg)
    snapped = snap_model(quant_aware(LlamaForCausalLM(cfg).eval(), recipe))
    state = {k: v.clone() for k, v in snapped.state_dict().items()}
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        light = quant_aware(snapped, recipe, weights=False)(ids).logits
        full = LlamaForCausalLM(cfg).eval()
        full.load_state_dict(state)
        full = quant_aware(full, recipe)(ids).logits
    assert torch.equal(light, full)
