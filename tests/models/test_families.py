"""The teachers users bring: tiny random-weight teachers of every supported family, distilled for a
few steps through the Python API, exported to ONNX and TFLite with float parity, and read by the
latency model. Configs and per-layer lists go through edgekd.models.arch; students start from the
teacher (depth and width) in every family."""

from __future__ import annotations

import json

import pytest
import torch

from edgekd.models.arch import arch_of, select_layers, with_arch

SEQ = 16
_W = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
          max_position_embeddings=64)
# model_type -> (config fields, classifier?). Mistral, Qwen, Gemma, Phi-3 have 2 KV heads: their default
# students get 1, the case litert-torch used to miscompile.
FAMILIES = {
    "llama": ({**_W, "num_key_value_heads": 4}, False),
    "mistral": ({**_W, "num_key_value_heads": 2}, False),
    "qwen2": ({**_W, "num_key_value_heads": 2}, False),
    "qwen3": ({**_W, "num_key_value_heads": 2, "head_dim": 8}, False),
    "gemma2": ({**_W, "num_key_value_heads": 2, "head_dim": 8}, False),
    "gemma3_text": ({**_W, "num_key_value_heads": 2, "head_dim": 8,
                     "layer_types": ["sliding_attention", "full_attention"] * 2, "sliding_window": 8}, False),
    "phi3": ({**_W, "num_key_value_heads": 2}, False),
    "gpt2": (dict(n_embd=32, n_layer=4, n_head=4, n_positions=64), False),
    "opt": (dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, ffn_dim=64, max_position_embeddings=64,
                 word_embed_proj_dim=32), False),
    "bert": (dict(_W), True),
    "distilbert": (dict(dim=32, n_layers=4, n_heads=4, hidden_dim=64, max_position_embeddings=64), True),
}


@pytest.fixture(scope="module")
def tokenizer():
    from edgekd.data.tokenizer import train_tokenizer
    from tests.distill.helpers import small_texts

    return train_tokenizer(small_texts(4), vocab_size=300)


@pytest.fixture(scope="module")
def class_data(tmp_path_factory):
    f = tmp_path_factory.mktemp("cls") / "reviews.jsonl"
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    f.write_text("\n".join(json.dumps({"text": f"the film was {words[i % 6]} and {words[(i * 5) % 6]}",
                                       "label": int(i % 6 < 3)}) for i in range(48)))
    return f


def make_teacher(model_type: str, d, tok, seed: int = 0, layers: int = 4):
    """A random-weight teacher of the family with its tokenizer, saved like any Hugging Face model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    fields, classifier = FAMILIES[model_type]
    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id,
               eos_token_id=tok.eos_token_id)
    cfg = AutoConfig.for_model(model_type, **ids, **fields)
    cfg = with_arch(cfg, {"num_hidden_layers": layers})  # layer_types follow
    cfg.initializer_range = 0.2  # logits well above float noise, so parity thresholds mean something
    torch.manual_seed(seed)
    model = (AutoModelForSequenceClassification if classifier else AutoModelForCausalLM).from_config(cfg)
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


@pytest.mark.slow
@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_family_distills_exports_and_predicts(model_type, tmp_path, tokenizer, class_data, text_dir, monkeypatch):
    from transformers import AutoConfig

    from edgekd.distill import DistillConfig, run
    from edgekd.export import export_model
    from edgekd.models.loading import load_model
    from edgekd.targets.cost_latency import param_count, predict

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    teacher = make_teacher(model_type, tmp_path / "teacher", tokenizer, layers=2)  # 2 -> 1 layer: quick exports
    classifier = FAMILIES[model_type][1]
    out = run(DistillConfig(teacher=str(teacher), data=str(class_data if classifier else text_dir), steps=2,
                            seq_len=SEQ, batch_size=4, out=str(tmp_path / "run"), baselines="none", eval_blocks=4,
                            init_batches=1, quiet=True, torch_device="cpu")).out
    rep = json.loads((out / "report.json").read_text())
    init = rep["student"]["init"]
    assert init["method"] == "teacher", init
    student, _, kind = load_model(out / "student")
    t_arch, s_arch = arch_of(AutoConfig.from_pretrained(teacher)), arch_of(student.config)
    assert kind == ("classifier" if classifier else "causal-lm")
    assert s_arch["num_hidden_layers"] == 1 and s_arch["hidden_size"] < t_arch["hidden_size"]
    assert init["layers"] == select_layers(2, 1) and init["width"] == "pruned"
    for key in ("layer_types",):
        if getattr(student.config, key, None) is not None:
            teacher_list = getattr(AutoConfig.from_pretrained(teacher), key)
            assert list(getattr(student.config, key)) == [teacher_list[i] for i in init["layers"]]
    assert param_count(student.config) == sum(p.numel() for p in student.parameters())
    assert predict(json.loads((out / "student" / "config.json").read_text()), "android-arm64", SEQ).total_ms > 0
    for fmt in ("onnx", "tflite"):
        rec = export_model(out / "student", fmt=fmt, seq_len=SEQ, out=tmp_path / f"student.{fmt}", show_progress=False)
        assert rec["passed"] and rec["max_abs_diff"] <= rec["threshold"]["max_abs_diff"], (fmt, rec)


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_family_configs_read_and_shrink(model_type):
    """arch_of reads every family's own field names; the default student and every search candidate
    make a valid config of the family, per-layer lists cut with the kept layers."""
    from transformers import AutoConfig

    from edgekd.models.students import default_student_config
    from edgekd.search import candidates

    fields, _ = FAMILIES[model_type]
    cfg = AutoConfig.for_model(model_type, vocab_size=300, pad_token_id=0, **fields)
    a = arch_of(cfg.to_dict())
    assert a == arch_of(cfg) and (a["hidden_size"], a["num_hidden_layers"], a["num_attention_heads"]) == (32, 4, 4)
    assert a["intermediate_size"] == (128 if model_type == "gpt2" else 64)  # GPT-2: n_inner None = 4 * n_embd
    s = default_student_config(cfg)
    sa = arch_of(s)
    assert sa["num_hidden_layers"] == 2 and sa["hidden_size"] == 16 and sa["num_attention_heads"] == 2
    assert type(s)(**s.to_dict()).to_dict()  # validates (layer_types length) like save_pretrained does
    from edgekd.models.students import student_config_from
    from edgekd.search import search_student

    res = search_student(cfg.to_dict(), "android-arm64", {"latency_ms": 50.0, "seq_len": SEQ})
    chosen = student_config_from({k: v for k, v in res.choice.items() if k != "precision"}, cfg)
    assert arch_of(chosen)["num_hidden_layers"] == res.choice["num_hidden_layers"]
    for c in candidates(cfg, ("float32",))[:40]:
        child = type(cfg)(**with_arch(cfg.to_dict(), {k: v for k, v in c.items() if k != "precision"}))
        ca = arch_of(child)
        assert (ca["num_hidden_layers"], ca["hidden_size"]) == (c["num_hidden_layers"], c["hidden_size"])
        if getattr(child, "layer_types", None) is not None:
            assert len(child.layer_types) == c["num_hidden_layers"]


def test_per_layer_lists_follow_the_kept_layers():
    from transformers import Gemma2Config

    cfg = Gemma2Config(num_hidden_layers=6, layer_types=["sliding_attention", "full_attention", "full_attention",
                                                         "sliding_attention", "sliding_attention", "full_attention"])
    s = with_arch(cfg, {"num_hidden_layers": 3})  # keeps teacher layers 0, 2, 4
    assert s.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    d = with_arch({"model_type": "x", "num_hidden_layers": 6, "mlp_only_layers": [1, 2, 4], "layer_types": list("abcdef")},
                  {"num_hidden_layers": 3})
    assert d["layer_types"] == ["a", "c", "e"] and d["mlp_only_layers"] == [1, 2]  # teacher 2 -> 1, 4 -> 2
    assert cfg.layer_types[1] == "full_attention" and len(cfg.layer_types) == 6  # the teacher's is untouched


def test_progressive_and_search_shrink_layer_lists():
    from transformers import Gemma3TextConfig

    from edgekd.distill.schemes import shrunk_config
    from edgekd.search import SearchResult

    cfg = Gemma3TextConfig(vocab_size=300, num_hidden_layers=4, hidden_size=32, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=8, intermediate_size=64)
    s = shrunk_config(cfg, {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2})
    assert len(s.layer_types) == 2 and s.head_dim == 8  # Gemma's head_dim is its own, not hidden / heads
    res = SearchResult(choice={"num_hidden_layers": 1, "hidden_size": 16, "precision": "int8"}, table=[],
                       target="t", latency_budget_ms=1, predicted_ms=1, calibrated=False)
    assert len(Gemma3TextConfig(**res.student_config(cfg)).layer_types) == 1


def test_family_native_names_in_student_overrides():
    from transformers import DistilBertConfig, GPT2Config, OPTConfig

    from edgekd.models.students import student_config_from

    g = student_config_from({"hidden_size": 16, "intermediate_size": 40, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8},
                            GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4))
    assert (g.n_embd, g.n_inner, g.n_layer, g.n_head) == (16, 40, 1, 2) and "head_dim" not in g.to_dict()
    o = student_config_from({"hidden_size": 16}, OPTConfig(vocab_size=300, hidden_size=32, num_attention_heads=4))
    assert o.word_embed_proj_dim == 16  # no projection in the teacher: none in the student
    d = student_config_from({"intermediate_size": 48, "n_layers": 1},
                            DistilBertConfig(vocab_size=300, dim=32, n_heads=4, hidden_dim=64, n_layers=2))
    assert (d.hidden_dim, d.n_layers, d.dim) == (48, 1, 32)


def test_depth_only_student_copies_every_kth_layer_in_each_family(tokenizer, tmp_path):
    from edgekd.models.loading import load_model
    from edgekd.models.students import build_student, student_config_from

    for model_type in ("gpt2", "opt", "bert", "distilbert", "phi3"):
        t, _, _ = load_model(make_teacher(model_type, tmp_path / model_type, tokenizer), with_tokenizer=False)
        s, info = build_student(t, student_config_from({"num_hidden_layers": 2}, t.config))
        assert info["method"] == "teacher" and info["width"] == "same" and info["layers"] == [0, 2], model_type
        t_sd, s_sd = t.state_dict(), s.state_dict()
        for name, p in s_sd.items():
            t_name = name
            for layers in ("transformer.h.", "model.decoder.layers.", "encoder.layer.", "transformer.layer.",
                           "model.layers."):
                if layers in name:
                    head, rest = name.split(layers, 1)
                    i, tail = rest.split(".", 1)
                    t_name = f"{head}{layers}{2 * int(i)}.{tail}"
                    break
            assert torch.equal(p, t_sd[t_name]), (model_type, name)


def test_student_that_cannot_start_from_the_teacher_says_why(tokenizer, tmp_path, capsys):
    from edgekd.models.loading import load_model
    from edgekd.models.students import build_student, student_config_from

    t, _, _ = load_model(make_teacher("llama", tmp_path / "t", tokenizer), with_tokenizer=False)
    cfg = student_config_from({"hidden_size": 24, "num_attention_heads": 4, "head_dim": 6}, t.config)
    capsys.readouterr()
    _, info = build_student(t, cfg)
    assert info["method"] == "random" and "head size" in info["why"]
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "random weights" in err
    from edgekd.report.write import render_markdown

    rep = {"teacher": {}, "student": {"init": info}, "scratch": {}, "distillation": {}, "latency": {}}
    assert "random weights" in render_markdown(rep)


def test_encoder_decoder_teacher_is_one_line_error_before_weights(tmp_path):
    from transformers import BartConfig, T5Config

    from edgekd.errors import EdgekdError
    from edgekd.models.loading import load_model

    d = tmp_path / "t5"
    d.mkdir()
    (d / "config.json").write_text(T5Config(vocab_size=300).to_json_string())  # no weights at all
    with pytest.raises(EdgekdError, match=r"encoder-decoder teachers \(t5\) are not supported yet"):
        load_model(d)
    with pytest.raises(EdgekdError, match="encoder-decoder"):
        arch_of(json.loads((d / "config.json").read_text()))
    # a family edgekd distils (edgekd.models.seq2seq) gets past the family check, to the weights; the decoder-only
    # shape readers (search, cost models) still say, in one line, that they do not cover it
    (d / "config.json").write_text(BartConfig(vocab_size=300).to_json_string())
    with pytest.raises(EdgekdError, match="has no model weights"):
        load_model(d)
    with pytest.raises(EdgekdError, match="without --target"):
        arch_of(json.loads((d / "config.json").read_text()))


_IDS = dict(vocab_size=300, pad_token_id=0, bos_token_id=1, eos_token_id=1)
_HEADS = {"bert": "BertForSequenceClassification", "distilbert": "DistilBertForSequenceClassification"}
# Beyond the matrix: config flags and heads that change the count.
_EXTRA = [("gemma", {**_W, "num_key_value_heads": 2, "head_dim": 8}, None),
          ("llama", {**_W, "attention_bias": True, "mlp_bias": True}, None),
          ("opt", {**FAMILIES["opt"][0], "word_embed_proj_dim": 16}, None),
          ("qwen2", {**_W, "num_key_value_heads": 2}, "Qwen2ForSequenceClassification"),
          ("gpt2", FAMILIES["gpt2"][0], "GPT2ForSequenceClassification"),
          ("bert", dict(_W), None),  # BertLMHeadModel: the MLM transform and vocabulary bias, no pooler
          ("bert", {**_W, "num_labels": 5}, "BertForSequenceClassification")]
_COUNT_CASES = [(mt, f, _HEADS.get(mt) if cls else None) for mt, (f, cls) in FAMILIES.items()] + _EXTRA


@pytest.mark.parametrize("model_type,fields,head", _COUNT_CASES,
                         ids=[f"{c[0]}-{c[2] or 'lm'}-{i}" for i, c in enumerate(_COUNT_CASES)])
def test_param_count_is_exact(model_type, fields, head):
    """The analytic count from the config equals the built model's, from the config object, its dict and
    its arch_of reading."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from edgekd.models.arch import param_count
    from edgekd.models.students import count_params

    cfg = AutoConfig.for_model(model_type, **_IDS, **fields)
    if head:
        cfg.architectures = [head]
    with torch.device("meta"):
        model = (AutoModelForSequenceClassification if head else AutoModelForCausalLM).from_config(cfg)
    assert param_count(cfg) == param_count(cfg.to_dict()) == param_count(arch_of(cfg)) == count_params(model)
