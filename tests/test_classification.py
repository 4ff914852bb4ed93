"""The classification path end to end (issue 11): a BERT (or DistilBERT) sentence classifier teacher and
labelled sentences -> a smaller BERT or edgekd's BiLSTM -> accuracy and macro-F1 of teacher, student, ce_only
and scratch -> ONNX/TFLite float and int8 taking the attention mask -> parity on held-out sentences of
varied length -> profile on host -> report. Tiny models, built and trained here on templated sentences."""

from __future__ import annotations

import csv
import json
import random
import sys

import numpy as np
import pytest
import torch

from tests.test_pipeline import _cache, cli  # noqa: F401  (_cache: a throwaway EDGEKD_CACHE)

POS = ["good", "great", "excellent", "wonderful", "lovely", "superb", "enjoyable", "brilliant", "moving", "fun"]
NEG = ["bad", "awful", "terrible", "boring", "dreadful", "poor", "dull", "horrible", "weak", "messy"]
SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the soundtrack", "the ending", "the cast",
            "the story", "the script", "the camera work"]
TEMPLATES = ["{w}", "{s} was {w}", "i thought {s} was really {w}", "{s} is {w} .",
             "honestly , {s} was {w} and i would tell anyone who asks me about it that it was {w}",
             "after two long hours in the cinema with my friends i can say that {s} was simply {w}"]
SEQ = 32
JOB = ["--steps", "20", "--seq-len", str(SEQ), "--batch-size", "16", "--lr", "3e-3", "--latency-budget", "1000",
       "--quiet"]


def sentences(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = i % 2
        out.append((rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), w=rng.choice(POS if label else NEG)), label))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """400 labelled sentences as train.jsonl and the same as train.csv (corpus.py holds ~5% out by hash)."""
    d = tmp_path_factory.mktemp("data")
    rows = sentences(400)
    (d / "train.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    with open(d / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        w.writerows(rows)
    return d


def _tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=160, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def _train(model, tok, rows, steps: int = 120):
    """A few steps of plain fine-tuning, so the teacher knows the task (its predictions are not near-ties)."""
    enc = tok([t for t, _ in rows], padding="max_length", truncation=True, max_length=SEQ, return_tensors="pt")
    y = torch.tensor([l for _, l in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(rows), (16,), generator=g)
        loss = model(input_ids=enc["input_ids"][i], attention_mask=enc["attention_mask"][i], labels=y[i]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _teacher(d, family: str):
    from transformers import BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

    rows = sentences(400)
    tok = _tokenizer([t for t, _ in rows])
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), max_position_embeddings=64, num_labels=2, pad_token_id=tok.pad_token_id)
    if family == "bert":
        model = BertForSequenceClassification(BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                         num_attention_heads=4, **common))
    else:
        model = DistilBertForSequenceClassification(DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=4,
                                                                     **common))
    _train(model, tok, rows).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return _teacher(tmp_path_factory.mktemp("teachers") / "tiny-bert", "bert")


@pytest.fixture(scope="module")
def distilbert(tmp_path_factory):
    return _teacher(tmp_path_factory.mktemp("teachers") / "tiny-distilbert", "distilbert")


# --- metrics, the BiLSTM ---------------------------------------------------------------------------

def test_macro_f1_matches_a_hand_computation():
    from edgekd.distill.evaluate import macro_f1

    true = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    pred = torch.tensor([0, 1, 0, 1, 2, 2, 2, 0, 2, 0])
    # class 0: TP 3, FP 1 (the 8th), FN 1 (the 2nd): F1 = 6/8. class 1: TP 1, FP 1, FN 1: 2/4.
    # class 2: TP 3, FP 1 (the 5th), FN 1 (the 8th): 6/8.
    assert macro_f1(pred, true) == pytest.approx((6 / 8 + 2 / 4 + 6 / 8) / 3)
    # a class predicted but never true counts (F1 0), as scikit-learn's default labels do
    assert macro_f1(torch.tensor([0, 1, 3]), torch.tensor([0, 1, 1])) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_bilstm_saves_loads_and_ignores_padding(bert, tmp_path):
    from edgekd.models.bilstm import BiLSTMForSequenceClassification
    from edgekd.models.loading import load_model
    from edgekd.models.students import build_student, student_config_from

    teacher, tok, kind = load_model(bert)
    cfg = student_config_from("bilstm", teacher.config)
    assert cfg.vocab_size == teacher.config.vocab_size and cfg.num_labels == 2 and cfg.embedding_size == 32
    student, info = build_student(teacher, cfg)
    assert isinstance(student, BiLSTMForSequenceClassification) and info["method"] == "teacher"
    assert torch.equal(student.embeddings.weight, teacher.get_input_embeddings().weight)
    student.save_pretrained(tmp_path / "s")
    assert (tmp_path / "s" / "model.safetensors").is_file() and not list((tmp_path / "s").glob("*.bin"))
    tok.save_pretrained(tmp_path / "s")
    again, _, again_kind = load_model(tmp_path / "s", what="student")
    assert again_kind == kind == "classifier" and type(again) is type(student)
    student.eval()
    ids = tok(["the plot was dull", "after two long hours i can say that the story was simply superb"],
              padding="max_length", max_length=SEQ, return_tensors="pt")
    with torch.no_grad():
        padded = again(**ids).logits
        for i in range(2):
            n = int(ids["attention_mask"][i].sum())
            alone = student(input_ids=ids["input_ids"][i:i + 1, :n]).logits  # the sentence without padding
            assert torch.allclose(padded[i], alone[0], atol=1e-5)
    from edgekd.models.arch import param_count
    from edgekd.models.students import count_params

    assert param_count(cfg) == count_params(student)


# --- the exported classifier takes the mask (the bug: a padded sentence attended to its padding) -------

def assert_padding_is_masked(model_dir, path, seq_len: int = SEQ):
    """The regression: a short sentence padded to the exported length, through the exported file in its own
    runtime, gives the logits PyTorch gives the sentence alone (no padding, no mask). Before the mask was an
    input, the padded sentence attended to its padding (BERT: 0.00187 against 0.00173)."""
    from edgekd.export import graph_runtime
    from edgekd.models.loading import load_model

    model, tok, _ = load_model(model_dir)
    m = graph_runtime.load(str(path))
    for text in ("dull", "the acting was superb", "i thought the ending was really boring"):
        enc = tok(text, padding="max_length", max_length=seq_len, return_tensors="np")
        n = int(enc["attention_mask"].sum())
        assert n < seq_len
        got = m.run({name: enc["attention_mask" if "mask" in name else "input_ids"].astype(dtype)
                     for name, _shape, dtype in m.inputs})[0]
        with torch.no_grad():
            alone = model(input_ids=torch.tensor(enc["input_ids"][:, :n])).logits.numpy()
        assert np.abs(got - alone).max() <= 1e-4, (path, text, got, alone)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_distilbert_short_sentence_padded_to_the_window_gives_pytorchs_logits(distilbert, fmt, tmp_path):
    """DistilBERT here; BERT's and the BiLSTM's files are checked the same way in the jobs below."""
    from edgekd.export import export_model

    rec = export_model(distilbert, fmt, "none", seq_len=SEQ, out=tmp_path / f"m.{fmt}", show_progress=False)
    assert rec["passed"] and rec["inputs"] == ["input_ids", "attention_mask"]
    assert len(set(rec["parity_inputs"]["lengths"])) > 4  # the check itself ran sentences of many lengths
    assert "accuracy" not in rec and "quality_on" not in rec  # no labelled sentences given: no quality claimed
    assert_padding_is_masked(distilbert, tmp_path / f"m.{fmt}")


def _macro_f1_by_confusion(pred: np.ndarray, true: np.ndarray) -> float:
    """scikit-learn's f1_score(average="macro") by its definition, from a confusion matrix (sklearn is not
    installed): per class present in either array, F1 = 2 C[c,c] / (row sum + column sum)."""
    classes = np.union1d(pred, true)
    m = np.array([[np.sum((true == a) & (pred == b)) for b in classes] for a in classes])
    return float(np.mean([2 * m[i, i] / (m[i].sum() + m[:, i].sum()) for i in range(len(classes))]))


def _file_labels(path, enc: dict) -> np.ndarray:
    """The labels an exported classifier gives each encoded sentence, run by hand one sentence at a time:
    onnxruntime's own session for .onnx, LiteRT through the runtime module boards use for .tflite."""
    from edgekd.export import graph_runtime

    n = len(enc["input_ids"])
    if str(path).endswith(".onnx"):
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.array([sess.run(None, {k: enc[k][i:i + 1].astype(np.int64) for k in ("input_ids", "attention_mask")})[0]
                         .argmax(-1)[0] for i in range(n)])
    m = graph_runtime.load(str(path))
    return np.array([m.run({name: enc["attention_mask" if "mask" in name else "input_ids"][i:i + 1].astype(dt)
                            for name, _shape, dt in m.inputs})[0].argmax(-1)[0] for i in range(n)])


def test_each_classifier_file_scores_labelled_heldout_sentences_in_its_runtime(bert, data, tmp_path):
    """A classifier's ONNX file (float, int8) records its own accuracy and macro-F1 on labelled held-out sentences,
    run in its runtime, beside PyTorch float's on the same sentences: checked against onnxruntime run here by
    hand and a confusion-matrix macro-F1, and PyTorch float against transformers' model. (TFLite's: the job
    tests below.)"""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgekd.data.corpus import load_corpus
    from edgekd.export import export_model
    from edgekd.export.parity import HeldoutSentences
    from edgekd.models.loading import read_config_dict

    tok = AutoTokenizer.from_pretrained(bert)
    labelled = HeldoutSentences.of(load_corpus(data / "train.jsonl"), read_config_dict(bert), tok, SEQ)
    corpus = load_corpus(data / "train.jsonl")  # the labels as the data holds them (ids 0, 1: the teacher's own)
    texts, labels = corpus.validation, np.array([corpus.label_values[i] for i in corpus.validation_labels])
    assert 10 <= len(texts) <= 40 and labelled.labels.tolist() == labels.tolist()
    enc = tok(texts, padding="max_length", max_length=SEQ, truncation=True, return_tensors="np")
    with torch.no_grad():
        model = AutoModelForSequenceClassification.from_pretrained(bert).eval()
        torch_pred = model(**{k: torch.from_numpy(v) for k, v in enc.items() if k != "token_type_ids"}).logits.argmax(-1)
    records = {}
    for quant in ("none", "int8-dynamic"):
        out = tmp_path / f"m.{quant}.onnx"
        records[quant] = rec = export_model(bert, "onnx", quant, seq_len=SEQ, out=out, show_progress=False,
                                            labelled=labelled, float_file=tmp_path / "m.none.onnx" if quant != "none" else None)
        pred = _file_labels(out, enc)
        assert rec["accuracy"] == pytest.approx(float((pred == labels).mean()))
        assert rec["macro_f1"] == pytest.approx(_macro_f1_by_confusion(pred, labels))
        assert rec["top1_agreement_pytorch"] == pytest.approx(float((pred == torch_pred.numpy()).mean()))
        p = rec["pytorch_float"]
        assert p["accuracy"] == pytest.approx(float((torch_pred.numpy() == labels).mean()))
        assert p["macro_f1"] == pytest.approx(_macro_f1_by_confusion(torch_pred.numpy(), labels))
        assert rec["eval_loss_vs_pytorch"] == pytest.approx(rec["eval_loss"] - p["eval_loss"])
        on = rec["quality_on"]
        assert on["sentences"] == len(texts) and "held-out sentences" in on["source"] and on["runtime"]
        assert on["seconds"] < 30
    # the float file is PyTorch's numerics: the same labels, the same loss to float rounding
    assert records["none"]["accuracy"] == records["none"]["pytorch_float"]["accuracy"]
    assert records["none"]["eval_loss"] == pytest.approx(records["none"]["pytorch_float"]["eval_loss"], abs=1e-4)


def test_a_float_export_whose_labels_flip_fails_parity():
    from edgekd.export.parity import compare

    ref = [np.array([[0.30, 0.29]]), np.array([[1.0, -1.0]])]
    got = [np.array([[0.2899, 0.2901]]), np.array([[1.0, -1.0]])]  # diff 1e-2 scale-wise fine, label flipped
    rec = compare(ref, got, quantized=False, min_top1=0.9, labels_must_agree=True)
    assert rec["top1_agreement"] == 0.5 and not rec["passed"]
    assert compare(ref, ref, quantized=False, min_top1=0.9, labels_must_agree=True)["passed"]


# --- the job --------------------------------------------------------------------------------------

def _check_run(out, kind_of_student: str, data_file, seq_len: int = SEQ):
    from edgekd.models.loading import load_model
    from edgekd.report import CLASSIFIER_KEYS, ENGINE_KEYS, JOB_KEYS, missing_keys

    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "complete" and rep["kind"] == "classifier"
    assert missing_keys(rep, ENGINE_KEYS) == missing_keys(rep, JOB_KEYS) == missing_keys(rep, CLASSIFIER_KEYS) == []
    for who in ("teacher", "student", "ce_only", "scratch"):
        assert 0 <= rep[who]["accuracy"] <= 1 and 0 <= rep[who]["macro_f1"] <= 1, who
    # the task is easy and the teacher was fine-tuned on it (the WordPiece vocabulary, and so the teacher, varies a
    # little from run to run: 19 to 22 of the 22 held-out sentences right were seen)
    assert rep["teacher"]["accuracy"] >= 0.75
    assert rep["student"]["config"]["model_type"] == kind_of_student
    for name in ("onnx", "onnx-int8", "tflite", "tflite-int8"):
        e = rep["exports"][name]
        assert e["passed"], (name, e)
        rec = json.loads((out / f"{e['path']}.json").read_text())
        assert rec["inputs"] == ["input_ids", "attention_mask"] and rec["kind"] == "classifier"
        assert "held-out sentences" in rec["parity_inputs"]["source"]
        assert len(set(rec["parity_inputs"]["lengths"])) >= 3  # of varied length
    assert {m["format"] for m in rep["latency"]["measured"]} == {"onnx", "tflite"}
    md = (out / "report.md").read_text()
    assert "macro-F1" in md and "ce_only baseline" in md
    # independent of the job's own check: the ONNX file's labels on held-out sentences are PyTorch's
    from edgekd.data.batching import sentences_of_every_length
    from edgekd.export import graph_runtime

    student, tok, _ = load_model(out / "student", what="student")
    rows = sentences_of_every_length([t for t, _ in sentences(40, seed=7)], tok, seq_len, 12)
    m = graph_runtime.load(str(out / rep["exports"]["onnx"]["path"]))
    for i in range(rows["input_ids"].shape[0]):
        feeds = {k: v[i:i + 1].numpy() for k, v in rows.items()}
        got = m.run(feeds)[0]
        with torch.no_grad():
            ref = student(**{k: v[i:i + 1] for k, v in rows.items()}).logits.numpy()
        assert got.argmax(-1) == ref.argmax(-1) and np.abs(got - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())
    for fmt in ("onnx", "tflite"):
        assert_padding_is_masked(out / "student", out / rep["exports"][fmt]["path"], seq_len)
    # each kept file's own accuracy and macro-F1 on the labelled held-out sentences the engine scored the models on,
    # in its runtime: against the file run here by hand, beside PyTorch float's (the engine's student numbers)
    from edgekd.data.corpus import load_corpus

    corpus = load_corpus(data_file)
    n = rep["student"]["eval_examples"]
    labels = np.array([corpus.label_values[i] for i in corpus.validation_labels[:n]])
    enc = tok(corpus.validation[:n], padding="max_length", max_length=seq_len, truncation=True, return_tensors="np")
    md_rows = md[md.index("| model | params"):]
    for name, e in rep["exports"].items():
        pred = _file_labels(out / e["path"], enc)
        assert e["quality_on"]["sentences"] == n and e["quality_on"]["runtime"], name
        assert e["accuracy"] == pytest.approx(float((pred == labels).mean())), name
        assert e["macro_f1"] == pytest.approx(_macro_f1_by_confusion(pred, labels)), name
        # PyTorch float on the files' sentences is the engine's student on its held-out ones (one sentence at a
        # time against batches of 16: a near-tie may flip one label)
        assert e["pytorch_float"]["accuracy"] == pytest.approx(rep["student"]["accuracy"], abs=1.01 / n), name
        assert f"| {name}: the {e['precision']} file in {e['quality_on']['runtime']} † |" in md_rows, name
    assert f"the same {n:,} held-out sentences" in md and "scored sentences" in md
    return rep


@pytest.mark.slow
def test_job_distills_bert_into_a_smaller_bert_from_jsonl(bert, data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a relative --out
    code, out, err = cli(monkeypatch, capsys, "distill", "--target", "host", "--teacher", bert, "--data",
                         data / "train.jsonl", "--out", "runs/bert", *JOB)
    assert code == 0, err
    rep = _check_run(tmp_path / "runs" / "bert", "bert", data / "train.jsonl")
    assert rep["search"]["table"] == "search/candidates.csv"
    assert rep["student"]["params"] < rep["teacher"]["params"]
    print("\nbert->bert:", {k: (round(rep[k]["accuracy"], 3), round(rep[k]["macro_f1"], 3))
                            for k in ("teacher", "student", "ce_only", "scratch")},
          {k: (e["max_abs_diff"], e["top1_agreement"]) for k, e in rep["exports"].items()},
          {k: v["wall_s"] for k, v in rep["timings_s"]["job"].items() if isinstance(v, dict)}, file=sys.stderr)


@pytest.mark.slow
def test_job_distills_bert_into_a_bilstm_from_csv(bert, data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(monkeypatch, capsys, "distill", "--target", "host", "--teacher", bert, "--data",
                         data / "train.csv", "--student", "bilstm", "--out", "runs/lstm", *JOB, "--seq-len", "24")
    assert code == 0, err
    rep = _check_run(tmp_path / "runs" / "lstm", "edgekd_bilstm", data / "train.csv", 24)  # the recurrence unrolls: a shorter window
    assert rep["search"]["table"] is None and rep["latency"]["predicted_ms"] is None
    assert rep["latency"]["measured_on_target_ms"] > 0 and rep["latency"]["meets_budget_measured"] is True
    assert rep["student"]["init"]["method"] == "teacher"  # the teacher's word embeddings
    from edgekd.report import print_summary

    print_summary(tmp_path / "runs" / "lstm", rep)
    said = capsys.readouterr().out
    assert f"teacher {rep['teacher']['accuracy']:.3f} / {rep['teacher']['macro_f1']:.3f}" in said
    print("\nbert->bilstm:", {k: (round(rep[k]["accuracy"], 3), round(rep[k]["macro_f1"], 3))
                              for k in ("teacher", "student", "ce_only", "scratch")},
          {k: (e["max_abs_diff"], e["top1_agreement"]) for k, e in rep["exports"].items()},
          {k: v["wall_s"] for k, v in rep["timings_s"]["job"].items() if isinstance(v, dict)}, file=sys.stderr)


# --- what is not supported is one line ---------------------------------------------------------------

def test_unsupported_inputs_are_one_line(bert, data, tmp_path, monkeypatch, capsys):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    roberta = tmp_path / "roberta"
    RobertaForSequenceClassification(RobertaConfig(vocab_size=100, hidden_size=16, intermediate_size=32,
                                                   num_hidden_layers=1, num_attention_heads=2)).save_pretrained(roberta)
    cases = [(["--teacher", bert, "--student", "cnn"], "bilstm"),
             (["--teacher", roberta], "bert, distilbert"),
             (["--teacher", bert, "--student", "bilstm", "--generative"], "causal-LM")]
    for args, needle in cases:
        code, _, err = cli(monkeypatch, capsys, "distill", "--target", "host", "--data", data / "train.jsonl",
                           "--out", tmp_path / "run", *args, *JOB)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0], (args, err)
        assert not (tmp_path / "run" / "report.json").exists()
