"""Every export runs, matches PyTorch, and says so in FILE.json; failures name the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgekd.errors import EdgekdError, JobFailed
from edgekd.export.hf import load_for_export
from edgekd.export import graph_runtime
from tests.export.conftest import SEQ

# Static int8 is checked on the classifier: on a randomly initialised causal LM its top-1 agreement sits
# right at 0.9 (near-tied logits), which would make the test a coin toss rather than a check.
CASES = [("llama", "onnx", "none"), ("llama", "onnx", "int8-dynamic"),
         ("bert", "onnx", "none"), ("bert", "onnx", "int8"),
         ("llama", "tflite", "none"), ("llama", "tflite", "int8-dynamic"),
         ("bert", "tflite", "none"), ("bert", "tflite", "int8-dynamic"), ("bert", "tflite", "int8")]


def _torch_and_file(model_dir, path, rows):
    """Independent of the exporter's own check: run PyTorch and the file on fresh ids."""
    module = load_for_export(model_dir).module
    m = graph_runtime.load(str(path))
    ref, got = [], []
    with torch.no_grad():
        for i in range(rows.shape[0]):
            ref.append(module(rows[i:i + 1]).numpy())  # a classifier without a mask: every token counts
            row = rows[i:i + 1].numpy()
            got.append(m.run({name: (np.ones_like(row) if "mask" in name else row).astype(dtype)
                              for name, _shape, dtype in m.inputs})[0])
    return np.concatenate(ref), np.concatenate(got)


@pytest.mark.slow
@pytest.mark.parametrize("model,fmt,quant", CASES, ids=["-".join(c) for c in CASES])
def test_export_passes_parity(exported, llama_dir, bert_dir, model, fmt, quant):
    path, rec = exported(model, fmt, quant)
    assert path.is_file() and path.stat().st_size > 0
    on_disk = json.loads(path.with_name(path.name + ".json").read_text())
    assert on_disk == json.loads(json.dumps(rec))
    assert rec["passed"] and rec["format"] == fmt and rec["quantize"] == quant and rec["seq_len"] == SEQ
    assert rec["precision"] == ("float32" if quant == "none" else "int8")
    for key in ("path", "size_mb", "max_abs_diff", "top1_agreement", "logits_scale", "threshold"):
        assert key in rec
    g = torch.Generator().manual_seed(123)
    rows = torch.randint(0, 512, (16 if model == "bert" else 4, SEQ), generator=g)
    ref, got = _torch_and_file(llama_dir if model == "llama" else bert_dir, path, rows)
    assert got.shape == ref.shape
    agree = float((ref.argmax(-1) == got.argmax(-1)).mean())
    if quant == "none":
        assert np.abs(ref - got).max() <= 1e-3 * np.abs(ref).max()
        assert rec["max_abs_diff"] <= rec["threshold"]["max_abs_diff"]
    else:
        assert agree >= 0.8  # fresh rows, some slack on the 0.9 the export itself enforced
        # a classifier's labels are judged where PyTorch's is decisive (near-tied rows of an untrained model flip)
        assert rec["top1_agreement_decisive" if model == "bert" else "top1_agreement"] >= 0.9
        assert rec["size_mb"] < rec["float_size_mb"]


@pytest.mark.slow
def test_onnx_sequence_axis_is_dynamic(exported, llama_dir):
    path, rec = exported("llama", "onnx", "none")
    assert rec["dynamic_seq"] is True
    rows = torch.randint(0, 512, (2, SEQ + 9), generator=torch.Generator().manual_seed(5))
    ref, got = _torch_and_file(llama_dir, path, rows)
    assert got.shape == ref.shape == (2, SEQ + 9, 512)
    assert np.abs(ref - got).max() <= 1e-3 * np.abs(ref).max()


@pytest.mark.slow
def test_parity_failure_gives_numbers_and_leaves_no_file(llama_dir, tmp_path):
    from edgekd.export import export_model

    out = tmp_path / "strict.int8.onnx"
    with pytest.raises(JobFailed) as e:
        export_model(llama_dir, "onnx", "int8-dynamic", seq_len=SEQ, out=out, min_top1=1.0, show_progress=False)
    msg = str(e.value)
    assert "top-1 agreement" in msg and "< 1.0" in msg and "\n" not in msg
    assert not out.exists()
    rec = json.loads((tmp_path / "strict.int8.onnx.json").read_text())
    assert rec["passed"] is False and rec["top1_agreement"] < 1.0


def test_calib_inputs_are_used_and_checked(llama_dir, bert_dir, tmp_path):
    from edgekd.export import export_model

    rows = torch.randint(0, 512, (6, SEQ), generator=torch.Generator().manual_seed(1))
    rec = export_model(bert_dir, "onnx", "int8", seq_len=SEQ, out=tmp_path / "c.onnx", calib_inputs=rows,
                       show_progress=False)
    # a classifier's record also says how long each row's sentence was (no mask given: every token)
    assert rec["parity_inputs"] == {"source": "calib_inputs", "rows": 3, "lengths": [SEQ] * 3} and rec["calib_rows"] == 3
    bad = rows.clone()
    bad[0, 0] = 4096
    with pytest.raises(EdgekdError, match="outside the model's vocabulary"):
        export_model(llama_dir, "onnx", "int8", seq_len=SEQ, out=tmp_path / "d.onnx", calib_inputs=bad,
                     show_progress=False)
    with pytest.raises(EdgekdError, match=r"shaped \[N, seq_len=16\]"):
        export_model(llama_dir, "onnx", "none", seq_len=SEQ, out=tmp_path / "e.onnx", calib_inputs=rows[:, :5],
                     show_progress=False)


def test_a_causal_lm_file_scores_its_heldout_rows(llama_dir, tmp_path):
    """A logits file given held-out rows records its own quality on them in its runtime, beside PyTorch float's
    (loss by transformers' own cross-entropy); static int8 checks (and scores) every other row, with the
    teacher's argmax of those rows."""
    from transformers import AutoModelForCausalLM

    from edgekd.export import export_model

    rows = torch.randint(0, 512, (6, SEQ), generator=torch.Generator().manual_seed(3))
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    with torch.no_grad():
        top1 = model(rows).logits[:, :-1].argmax(-1)  # the model stands in for the teacher
        loss = {n: float(model(r, labels=r).loss) for n, r in (("all", rows), ("odd", rows[1::2]))}
    given = {"input_ids": rows, "source": "held-out rows"}
    flt = export_model(llama_dir, "onnx", "none", seq_len=SEQ, out=tmp_path / "f.onnx", calib_inputs=given,
                       teacher_top1=top1, show_progress=False)
    assert flt["quality_on"] == {"blocks": 6, "window": SEQ, "tokens": 6 * (SEQ - 1), "runtime": flt["quality_on"]["runtime"],
                                 "source": f"the first {SEQ} tokens of 6 held-out rows"}
    assert flt["quality_on"]["runtime"].startswith("onnxruntime ")
    assert flt["eval_loss"] == pytest.approx(loss["all"], abs=1e-5) == flt["pytorch_float"]["eval_loss"]
    assert flt["top1_agreement_teacher"] == flt["top1_agreement_pytorch"] == 1.0
    q = export_model(llama_dir, "onnx", "int8", seq_len=SEQ, out=tmp_path / "q.onnx", calib_inputs=given,
                     teacher_top1=top1, min_top1=0.5, show_progress=False)  # near-tied random logits: see CASES
    assert q["quality_on"]["blocks"] == 3 and q["pytorch_float"]["eval_loss"] == pytest.approx(loss["odd"], abs=1e-5)
    assert q["pytorch_float"]["top1_agreement_teacher"] == 1.0  # the odd rows' argmax, matched to the odd rows
    assert q["top1_agreement_teacher"] == q["top1_agreement_pytorch"] and q["eval_loss"] != flt["eval_loss"]
    # random ids (no held-out rows given) are no held-out text: no quality
    assert "eval_loss" not in export_model(llama_dir, "onnx", "none", seq_len=SEQ, out=tmp_path / "r.onnx",
                                           show_progress=False)


def test_bad_arguments_name_the_problem(llama_dir, tmp_path):
    from edgekd.export import export_model

    with pytest.raises(EdgekdError, match="unknown format 'pt'"):
        export_model(llama_dir, "pt")
    with pytest.raises(EdgekdError, match="--quantize int4 is for the generative formats"):
        export_model(llama_dir, "onnx", "int4")
    with pytest.raises(EdgekdError, match="does not exist"):
        export_model(tmp_path / "nope", "onnx")
    with pytest.raises(EdgekdError, match="no config.json"):
        export_model(tmp_path, "onnx")
    with pytest.raises(EdgekdError, match="exceeds the model's 128 positions"):
        export_model(llama_dir, "onnx", seq_len=4096, out=tmp_path / "x.onnx", show_progress=False)


class _Eig(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x).real


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.spectrum = _Eig()

    def forward(self, x):
        return self.spectrum(self.proj(x))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_unlowerable_op_names_op_and_module(fmt, tmp_path):
    from edgekd.export.onnx_export import export_onnx
    from edgekd.export.tflite_export import export_tflite

    net, x = _Net().eval(), torch.randn(4, 4)
    with pytest.raises(EdgekdError) as e:
        if fmt == "onnx":
            export_onnx(net, {"x": x}, tmp_path / "bad.onnx", max_len=4)
        else:
            export_tflite(net, {"x": x}, tmp_path / "bad.tflite")
    msg = str(e.value)
    assert "aten.linalg_eig" in msg and "spectrum" in msg and "_Eig" in msg, msg


@pytest.mark.parametrize("model,fmt,quant", [("llama", "onnx", "none"), ("bert", "tflite", "int8")])
def test_export_leaves_a_device_check_set_that_its_file_passes(exported, model, fmt, quant):
    """Beside each passing file, FILE.parity.npz: its parity rows, PyTorch's logits of them and its bar, which a
    device runs through the file (graph_runtime.parity_run, torch-free) to the same verdict as the export's."""
    from edgekd.export import graph_runtime as gr

    path, rec = exported(model, fmt, quant)
    check = path.with_name(path.name + gr.CHECK_SUFFIX)
    assert rec["device_check"] == {"written": True, "file": check.name, "rows": rec["parity_inputs"]["rows"]}
    with np.load(check) as z:
        assert bool(z["quantized"]) == (quant != "none") and bool(z["labels"]) == (model == "bert")
        assert len(z["reference"]) == rec["parity_inputs"]["rows"]
    run = gr.parity_run(gr.load(str(path)), str(check))
    assert run["passed"] and run["checked"] and run["rows"] == rec["parity_inputs"]["rows"]
    assert run["top1_agreement"] == pytest.approx(rec["top1_agreement"])
    assert run["max_abs_diff"] == pytest.approx(rec["max_abs_diff"], rel=1e-5, abs=1e-7)
