"""Generative exports (litert-lm, onnx-genai) built by the real builders, loaded and generating in the real runtimes.

The built-in teacher's four exports (float and int4 in each format) are built once for the module; the
parity numbers in their records are checked against PyTorch's generate() again here, independently.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.cli import main
from edgekd.export import export_generative
from edgekd.export.generative_export import default_out
from edgekd.export.parity import GEN_DECISIVE_MARGIN, GEN_MAX_PPL_RATIO, GEN_MIN_TOP1

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "edgekd" / "models" / "builtin_teacher"
# The `litert-lm` console script beside the interpreter or on PATH, else its entry point run the same way.
_SCRIPT = shutil.which("litert-lm", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
LITERT_LM_CLI = [_SCRIPT] if _SCRIPT else [sys.executable, "-c", "import sys; from litert_lm_cli.main import main; "
                                                               "sys.argv[0] = 'litert-lm'; sys.exit(main())"]
# The last is longer than the 64-token prefill signature: generative_runtime feeds it in two chunks.
PROMPTS = [[487, 289, 3652, 9, 89, 308, 11, 40, 41, 42, 43, 44], list(range(100, 140)), list(range(200, 300))]


@pytest.fixture(scope="module")
def teacher_exports(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    recs = {}
    for fmt, quant, name in (("litert-lm", "none", "t.litertlm"), ("litert-lm", "int4", "t.int4.litertlm"),
                             ("onnx-genai", "none", "t-genai"), ("onnx-genai", "int4", "t-genai.int4")):
        recs[(fmt, quant)] = export_generative(TEACHER, fmt, quant, out=d / name, show_progress=False)
    return recs


def _pytorch_greedy(model_dir: Path, prompt: list[int], n: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             eos_token_id=None, pad_token_id=0)
    return seq[0, len(prompt):].tolist()


def test_float_exports_generate_pytorch_tokens(teacher_exports):
    from edgekd.export import generative_runtime

    for fmt, runtime in (("litert-lm", "litert-lm"), ("onnx-genai", "onnxruntime-genai")):
        rec = teacher_exports[(fmt, "none")]
        assert rec["passed"] and rec["tokens_match_share"] == 1.0 and rec["mean_first_divergence"] == 32
        assert rec["precision"] == "float32" and abs(rec["ppl_ratio"] - 1) < 1e-4 and rec["top1_agreement"] == 1.0
        assert rec["run"]["new_tokens"] == 32 and rec["run"]["prompts"] == 8 and rec["run"]["runtime"] == runtime
        assert json.loads(Path(rec["path"] + ".json").read_text())["tokens_match_share"] == 1.0
        model = generative_runtime.load(rec["path"], threads=2)  # an independent prompt, against transformers directly
        assert (model.format, model.runtime) == (fmt, runtime)
        for prompt in PROMPTS:
            assert model.generate(prompt, 24) == _pytorch_greedy(TEACHER, prompt, 24)
        model.close()
    lt = teacher_exports[("litert-lm", "none")]
    assert lt["prefill_lengths"] == [64] and lt["cache_length"] == 192 and lt["convert_s"] > 0


def test_int4_exports_are_smaller_and_within_bounds(teacher_exports):
    for fmt in ("litert-lm", "onnx-genai"):
        rec, flt = teacher_exports[(fmt, "int4")], teacher_exports[(fmt, "none")]
        assert rec["passed"] and rec["precision"] == "int4" and rec["quantize"] == "int4"
        assert rec["size_mb"] < 0.5 * flt["size_mb"]
        assert rec["top1_agreement_decisive"] >= GEN_MIN_TOP1 and rec["ppl_ratio"] <= GEN_MAX_PPL_RATIO
        assert rec["threshold"] == {"top1_agreement_decisive": GEN_MIN_TOP1, "ppl_ratio": GEN_MAX_PPL_RATIO,
                                    "decisive_margin": GEN_DECISIVE_MARGIN}
        assert 0 < rec["decisive_positions"] <= rec["positions"]
    assert teacher_exports[("litert-lm", "int4")]["recipe"].startswith("dynamic_wi4_afp32")
    assert teacher_exports[("onnx-genai", "int4")]["recipe"].startswith("int4 block_size=32 MatMulNBits")


def test_litert_lm_runtime_benchmarks_the_bundle(teacher_exports, tmp_path):
    for quant in ("none", "int4"):
        bundle = tmp_path / f"{quant}.litertlm"
        shutil.copy(teacher_exports[("litert-lm", quant)]["path"], bundle)  # its engine writes caches beside it
        done = subprocess.run([*LITERT_LM_CLI, "benchmark", str(bundle), "-p", "16", "-d", "16"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "Decode speed" in done.stdout + done.stderr


def test_litert_lm_engine_generates_the_same_text(teacher_exports):
    """The LiteRT-LM engine itself (text in, text out, greedy top_k=1, no template) continues as generative_runtime's
    token-level run of the bundle does: no start token is prepended and both tokenise alike."""
    import litert_lm
    from litert_lm import interfaces
    from transformers import AutoTokenizer

    from edgekd.export import generative_runtime

    path = teacher_exports[("litert-lm", "none")]["path"]
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    model, engine = generative_runtime.load(path), litert_lm.Engine(path)
    assert engine.bos_token_id is None
    for text in ("def parse_args(argv):\n    parser = argparse.", "class Queue:\n    def __init__(self, maxsize=0):\n"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert engine.tokenize(text) == ids
        session = engine.create_session(apply_prompt_template=False, max_output_tokens=16,
                                        sampler_config=interfaces.SamplerConfig(top_k=1))
        session.run_prefill([text])
        assert "".join(session.run_decode().texts) == tokenizer.decode(model.generate(ids, 16))
        session.close()
    engine.close()


def test_onnxruntime_genai_loads_the_folder(teacher_exports):
    import onnx
    import onnxruntime_genai as og

    for quant in ("none", "int4"):
        folder = Path(teacher_exports[("onnx-genai", quant)]["path"])
        assert {"genai_config.json", "model.onnx", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
        graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
        assert any(i.name.startswith("past_key_values.") for i in graph.input)
        assert any(o.name.startswith("present.") for o in graph.output)
        if quant == "int4":
            assert any(n.op_type == "MatMulNBits" for n in graph.node)
        model = og.Model(str(folder))
        tokenizer = og.Tokenizer(model)
        assert list(tokenizer.encode("def foo(x):")) == [487, 289, 3652, 9, 89, 308]


def test_parity_failure_leaves_nothing_and_exits_1(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    out = os.path.relpath(tmp_path / "strict-genai.int4", REPO)  # relative paths, as a user types them
    (tmp_path / "strict-genai.int4").mkdir()  # an older export there is not kept either
    from edgekd.export import parity

    monkeypatch.setattr(parity, "GEN_MAX_PPL_RATIO", 0.9)  # far below the 0.99-1.01 int4 reaches: it must fail
    with pytest.raises(SystemExit) as e:
        main(["export", "edgekd/models/builtin_teacher", "--format", "onnx-genai", "--quantize", "int4",
              "--out", out])
    assert e.value.code == 1 and "failed generation parity: top-1 agreement" in capsys.readouterr().err
    assert not (tmp_path / "strict-genai.int4").exists()
    rec = json.loads((tmp_path / "strict-genai.int4.json").read_text())
    assert rec["passed"] is False and rec["threshold"]["ppl_ratio"] == 0.9 and rec["ppl_ratio"] > 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["strict-genai.int4.json"]  # no temp build folder left


def test_unsupported_architecture_is_one_line_exit_2(capsys, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)).save_pretrained(d)
    capsys.readouterr()  # save_pretrained's own progress bar
    for fmt in ("litert-lm", "onnx-genai"):
        with pytest.raises(SystemExit) as e:
            main(["export", str(d), "--format", fmt])
        assert e.value.code == 2
        line = capsys.readouterr().err.strip()
        assert len(line.splitlines()) == 1 and "GPT2LMHeadModel cannot be exported as " + fmt in line
        assert "LlamaForCausalLM" in line
    assert not (tmp_path / "export").exists()


def test_litert_lm_needs_a_stop_token_one_line_exit_2(capsys, tmp_path):
    """LiteRT-LM's engine opens no bundle without a stop token ("Stop tokens are required"), which the bundle
    takes from eos_token_id: a model naming none is refused before anything is built, in one line."""
    d = _tiny("qwen3", tmp_path / "noeos")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | {"eos_token_id": None}))
    (d / "generation_config.json").unlink(missing_ok=True)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["export", str(d), "--format", "litert-lm"])
    line = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(line.splitlines()) == 1
    assert "names no end-of-sequence token (eos_token_id in its config.json)" in line and "set eos_token_id" in line
    # litert-torch reads generation_config.json where there is one: an end token in config.json alone is not enough
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 0}))
    with pytest.raises(SystemExit) as e:
        main(["export", str(d), "--format", "litert-lm"])
    assert e.value.code == 2 and "eos_token_id in its generation_config.json" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()


def test_usage_mistakes_are_one_line(capsys):
    for argv, words in ((["--format", "onnx", "--quantize", "int4"], "int4 is for the generative formats"),
                        (["--format", "litert-lm", "--quantize", "int8-dynamic"], "use --quantize int8"),
                        (["--format", "litert-lm", "--out", "x.bin"], "must end in .litertlm"),
                        (["--format", "onnx-genai", "--new-tokens", "0"], "--new-tokens")):
        with pytest.raises(SystemExit) as e:
            main(["export", str(TEACHER), *argv])
        assert e.value.code == 2 and words in capsys.readouterr().err


def test_default_paths():
    assert default_out(TEACHER, "litert-lm", "int4").name == "builtin_teacher.int4.litertlm"
    assert default_out(TEACHER, "onnx-genai", "none").name == "builtin_teacher-genai"
    assert default_out(TEACHER, "onnx-genai", "int4").name == "builtin_teacher-genai.int4"
    assert default_out(TEACHER, "litert-lm", "none").parent == TEACHER.parent / "export"


def _tiny(kind: str, d: Path) -> Path:
    import transformers as T

    cfg = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=1,
               initializer_range=0.2)  # peaked logits: greedy continuations are not decided by float noise
    config, model = {"qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM), "phi3": (T.Phi3Config, T.Phi3ForCausalLM)}[kind]
    extra = {"head_dim": 16} if kind == "qwen3" else {"original_max_position_embeddings": 256}
    torch.manual_seed(0)
    model(config(**cfg, **extra)).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TEACHER / f, d / f)
    return d


@pytest.mark.parametrize("kind,fmt", [("qwen3", "litert-lm"), ("phi3", "onnx-genai"), ("qwen3", "onnx-genai")])
def test_other_families_generate_like_pytorch(kind, fmt, tmp_path):
    rec = export_generative(_tiny(kind, tmp_path / kind), fmt, out=tmp_path / ("m.litertlm" if fmt == "litert-lm"
                                                                                  else "m-genai"),
                            prompts=PROMPTS, show_progress=False)
    assert rec["passed"] and rec["tokens_match_share"] == 1.0 and rec["run"]["prompt_source"] == "prompts"


def test_run_dir_generative_variant(tmp_path, monkeypatch):
    from edgekd.export import GENERATIVE_VARIANTS, export_key, export_run, parity

    assert export_key("litert-lm", "int4") == "litert-lm-int4" and export_key("onnx-genai", "float32") == "onnx-genai"
    assert {v[:2] for v in GENERATIVE_VARIANTS} == {("litert-lm", "none"), ("litert-lm", "int4"),
                                                    ("onnx-genai", "none"), ("onnx-genai", "int4")}
    shutil.copytree(TEACHER, tmp_path / "student")
    computed = []  # PyTorch's reference continuations are computed once per job, whatever the export count
    real_init = parity.GenerationReference.__init__
    monkeypatch.setattr(parity.GenerationReference, "__init__",
                        lambda self, *a, **k: (computed.append(1), real_init(self, *a, **k))[1])
    exports = export_run(tmp_path, variants=(("onnx-genai", "none", "student-genai"),
                                             ("onnx-genai", "int4", "student-genai.int4")), prompts=PROMPTS)
    assert len(computed) == 1 and exports["onnx-genai"]["tokens_match_share"] == 1.0
    rec = exports["onnx-genai-int4"]
    assert rec["passed"] and rec["path"] == "export/student-genai.int4" and rec["precision"] == "int4"
    assert {"recipe", "ppl_ratio", "top1_agreement", "tokens_match_share", "size_mb"} <= set(rec)
    assert (tmp_path / "export" / "student-genai.int4" / "genai_config.json").is_file()


@pytest.mark.parametrize("name", ["generative_runtime.py", "graph_runtime.py"])
def test_runtimes_are_standalone(name):
    """They run where only python3 and a runtime are (graph_runtime.py ships to boards with the board timer):
    loading the file imports neither torch nor edgekd."""
    code = ("import runpy, sys; runpy.run_path(sys.argv[1]); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'edgekd')]; assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code, str(REPO / "edgekd" / "export" / name)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_tf_placeholder_fails_loudly():
    code = ("from edgekd.export.litert_lm_build import install_tf_placeholder as p; assert p(force=True); "
            "from tensorflow.lite.python import schema_py_generated as s\n"
            "try:\n s.Model\nexcept RuntimeError as e:\n assert 'pip install tensorflow-cpu' in str(e)\n"
            "else:\n raise SystemExit('read without error')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs tensorflow-cpu to compare against")
def test_tf_placeholder_builds_the_same_bundle(teacher_exports, tmp_path):
    """With the placeholder, every section of the bundle is byte-identical to the one built with TensorFlow
    (the header differs only in its creation timestamp)."""
    from edgekd.export import generative_runtime

    work = tmp_path / "w"
    options = {"prefill_lengths": [64], "cache_length": 192, "quantization_recipe": "none", "force_tf_placeholder": True}
    done = subprocess.run([sys.executable, "-m", "edgekd.export.litert_lm_build", str(TEACHER), str(work),
                           json.dumps(options)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]

    def sections(path):
        with open(path, "rb") as f:
            data = f.read()
        return [(kind, data[b:e]) for kind, b, e in generative_runtime.litertlm_sections(str(path))]

    assert sections(work / "model.litertlm") == sections(teacher_exports[("litert-lm", "none")]["path"])


def test_decisive_margin_is_top_probability_minus_runner_up():
    import numpy as np

    from edgekd.export.parity import _margin

    logits = np.log(np.array([[0.5, 0.3, 0.2], [0.34, 0.33, 0.33], [0.9, 0.05, 0.05]]))
    assert np.allclose(_margin(logits), [0.2, 0.01, 0.85])


def test_litert_lm_int4_is_blockwise_where_the_weights_allow(tmp_path):
    """Every input size of the tiny Qwen3 (64, 128, 4 x 16) is a multiple of 32: blocks of 32, as phones
    ship; the built-in teacher's 688-wide MLP is not, and gets the per-channel recipe, said in its record."""
    from edgekd.export.generative_export import recipe_for
    from edgekd.models.loading import read_config_dict

    rec = export_generative(_tiny("qwen3", tmp_path / "q"), "litert-lm", "int4", out=tmp_path / "q.int4.litertlm",
                            prompts=PROMPTS, show_progress=False)
    assert rec["passed"] and rec["builder_argument"] == "dynamic_wi4b32_afp32" and "blocks of 32" in rec["recipe"]
    arg, what = recipe_for("litert-lm", "int4", read_config_dict(TEACHER))
    assert arg == "dynamic_wi4_afp32" and "688 is not a multiple" in what


def test_each_file_scores_the_heldout_text_in_its_runtime(teacher_exports):
    """An export's own quality in its runtime (parity.GenerationReference.quality): on the built-in teacher's
    float exports it is PyTorch's on the same tokens (loss by transformers' own cross-entropy, argmax the
    teacher's from the engine's evaluate); int4's is measured and differs."""
    from transformers import AutoModelForCausalLM

    from edgekd.distill.evaluate import evaluate
    from edgekd.export import generative_runtime
    from edgekd.export.parity import GenerationReference, HeldoutText, builtin_prompts

    blocks = torch.tensor(builtin_prompts(TEACHER, 8, 256))  # 8 held-out blocks, longer than the bundle's cache
    model = AutoModelForCausalLM.from_pretrained(TEACHER).eval()
    top1 = []  # the teacher's argmax per position, as the engine hands it to the export phase
    evaluate({}, model, [{"input_ids": blocks, "attention_mask": torch.ones_like(blocks), "labels": blocks}],
             teacher_top1=top1)
    heldout = HeldoutText.of(blocks.numpy(), torch.cat(top1).numpy(), 192, blocks=6)  # rows 0 1 3 4 6 7 of 8
    windows = blocks[[0, 1, 3, 4, 6, 7], :192]
    with torch.no_grad():
        loss = float(model(windows, labels=windows).loss)  # transformers' mean next-token cross-entropy
    reference = GenerationReference.load(TEACHER, PROMPTS, 8, heldout)
    got = {}
    for key, rec in teacher_exports.items():
        m = generative_runtime.load(rec["path"])
        got[key] = q = reference.quality(m)
        m.close()
        assert q["quality_on"] | {"seconds": 0} == {"blocks": 6, "window": 192, "tokens": 6 * 191, "seconds": 0,
                                                     "runtime": m.version,
                                                     "source": "the first 192 tokens of 6 held-out blocks, "
                                                               "spread evenly over all 8"}
        assert q["pytorch_float"]["eval_loss"] == pytest.approx(loss, abs=1e-5)
        assert q["pytorch_float"]["top1_agreement_teacher"] >= 0.995  # the teacher is the model here
        assert q["perplexity"] == pytest.approx(np.exp(q["eval_loss"]))
        assert q["eval_loss_vs_pytorch"] == pytest.approx(q["eval_loss"] - loss, abs=1e-5)
    for fmt in ("litert-lm", "onnx-genai"):
        flt, int4 = got[(fmt, "none")], got[(fmt, "int4")]
        assert flt["eval_loss"] == pytest.approx(loss, abs=1e-4) and flt["top1_agreement_pytorch"] >= 0.995
        assert flt["top1_agreement_teacher"] >= 0.995
        # int4's is its own: argmaxes flip and the loss moves (by how much depends on the text: 6e-5 to 0.03)
        assert int4["eval_loss"] != pytest.approx(flt["eval_loss"], abs=1e-6), (fmt, int4, flt)
        assert 0.8 < int4["top1_agreement_pytorch"] < 1.0 and 0.8 < int4["top1_agreement_teacher"] < 1.0, (fmt, int4)
