"""Sequence-to-sequence (Marian) teachers: the shipped parallel corpus, the student and its initialisation, and
the whole path end to end (CLI distill -> chrF in the report -> ONNX export whose greedy translations with the KV
cache are PyTorch's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgekd.errors import EdgekdError

EDGEKD = str(Path(sys.executable).parent / "edgekd")


def _tiny_marian(layers: int = 4, d_model: int = 16, vocab: int = 120):
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    return MarianMTModel(MarianConfig(vocab_size=vocab, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                      decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=2, eos_token_id=0,
                                      decoder_start_token_id=2)).eval()


def test_builtin_parallel_corpus_ships_with_its_sources():
    from edgekd.data.parallel_corpus import BUILTIN_PAIRS, load_parallel

    c = load_parallel("builtin")
    assert len(c.train) > 30000 and 0.02 < len(c.validation) / (len(c.train) + len(c.validation)) < 0.04
    assert all(s and t and s != t for s, t in c.train[:2000])
    assert len({s for s, _ in c.train}) == len(c.train)  # one pair per English message
    assert BUILTIN_PAIRS.stat().st_size < 3_000_000
    sources = json.loads((BUILTIN_PAIRS.parent / "SOURCES.json").read_text())
    assert sources["pairs"] == len(c.train) + len(c.validation)
    assert all(cat["package"] and cat["licence"] for cat in sources["catalogues"])
    assert "## Sources and licences" in (BUILTIN_PAIRS.parent / "README.md").read_text()


def test_user_pairs_split_and_errors(tmp_path):
    from edgekd.data.parallel_corpus import load_parallel

    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"source": f"s{i}", "target": f"t{i}", **({"split": "validation"} if i < 2 else {})})
                         + "\n" for i in range(10)))
    c = load_parallel(f)
    assert c.validation == [("s0", "t0"), ("s1", "t1")] and len(c.train) == 8
    f.write_text('{"source": "a"}\n')
    with pytest.raises(EdgekdError, match=r"p.jsonl:1 has no string 'source' and 'target'"):
        load_parallel(f)
    with pytest.raises(EdgekdError, match="sentence pairs"):
        load_parallel(tmp_path / "missing.txt")


def test_student_keeps_every_kth_layer_of_its_teacher():
    from edgekd.models.seq2seq import init_from_teacher, seq2seq_student_config
    from edgekd.models.students import build_student, student_config_from

    teacher = _tiny_marian(layers=4)
    cfg = student_config_from(None, teacher.config)
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.d_model) == (2, 2, 16)
    student, info = build_student(teacher, cfg)
    assert info["layers"] == {"encoder": [0, 2], "decoder": [0, 2]} and info["tensors_random"] == 0
    t, s = teacher.state_dict(), student.state_dict()
    for stack in ("encoder", "decoder"):
        for i, k in enumerate((0, 2)):
            w = f"model.{stack}.layers.{{}}.self_attn.q_proj.weight"
            assert torch.equal(s[w.format(i)], t[w.format(k)])
    assert torch.equal(s["model.shared.weight"], t["model.shared.weight"])
    # narrower: the tensors whose shapes differ start random, the rest is still the teacher's
    narrow = seq2seq_student_config(teacher.config, {"encoder_layers": 1, "decoder_ffn_dim": 16})
    student = type(teacher)(narrow)
    info = init_from_teacher(student, teacher)
    assert info["tensors_random"] > 0 and "narrower" in info["width"]
    assert torch.equal(student.state_dict()["model.decoder.layers.1.self_attn.k_proj.weight"],
                       t["model.decoder.layers.2.self_attn.k_proj.weight"])
    with pytest.raises(EdgekdError, match="decoder_layers must be an integer from 1 to the teacher's 4"):
        seq2seq_student_config(teacher.config, {"decoder_layers": 5})
    with pytest.raises(EdgekdError, match="num_hidden_layers"):
        seq2seq_student_config(teacher.config, {"num_hidden_layers": 1})


def test_logits_export_of_a_seq2seq_model_is_one_line(tmp_path):
    from edgekd.export import export_model

    _tiny_marian(layers=1).save_pretrained(str(tmp_path / "m"))
    with pytest.raises(EdgekdError, match="--format onnx-seq2seq"):
        export_model(tmp_path / "m", "onnx", show_progress=False)


def _pairs_file(path: Path) -> tuple[Path, list]:
    """300 pairs of the shipped corpus, the last 6 marked held out."""
    from edgekd.data.parallel_corpus import load_parallel

    pairs = load_parallel("builtin").train[:300]
    path.write_text("".join(json.dumps({"source": s, "target": t, **({"split": "validation"} if i >= 294 else {})},
                                       ensure_ascii=False) + "\n" for i, (s, t) in enumerate(pairs)))
    return path, pairs


@pytest.mark.slow
def test_seq2seq_distill_cli_chrf_and_onnx_export_with_kv_cache(tmp_path):
    import onnxruntime as ort
    import sacrebleu
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from edgekd.distill.teacher import make_tiny_seq2seq_teacher

    data, pairs = _pairs_file(tmp_path / "pairs.jsonl")
    teacher = make_tiny_seq2seq_teacher(tmp_path / "teacher", pairs[:294], train_steps=30)
    env = {**os.environ, "EDGEKD_CACHE": str(tmp_path / "cache")}
    run = tmp_path / "run"
    res = subprocess.run([EDGEKD, "distill", "--teacher", str(teacher), "--data", str(data), "--steps", "6",
                          "--batch-size", "8", "--seq-len", "32", "--out", str(run)],
                         capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "held-out chrF: teacher" in res.stdout
    rep = json.loads((run / "report.json").read_text())
    assert rep["kind"] == "seq2seq" and rep["student"]["init"]["method"] == "teacher"
    assert rep["distillation"]["kd_vs_ce_only"]["chrf_gained"] == pytest.approx(rep["student"]["chrf"] - rep["ce_only"]["chrf"])
    # chrF recomputed independently: transformers' own greedy generate on the 6 held-out pairs, sacrebleu's chrF
    held = pairs[294:]
    tok = AutoTokenizer.from_pretrained(str(teacher))
    for name, where in (("teacher", teacher), ("student", run / "student")):
        model = AutoModelForSeq2SeqLM.from_pretrained(str(where)).eval()
        enc = tok([s for s, _ in held], return_tensors="pt", padding=True)
        out = model.generate(**enc, num_beams=1, do_sample=False, max_new_tokens=32)
        hyps = tok.batch_decode(out, skip_special_tokens=True)
        assert rep[name]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [[t for _, t in held]]).score, abs=1e-6)
    assert "## Held-out translations" in (run / "report.md").read_text()

    res = subprocess.run([EDGEKD, "export", str(run / "student"), "--format", "onnx-seq2seq", "--new-tokens", "12"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    folder = run / "export" / "student-seq2seq"
    rec = json.loads(Path(f"{folder}.json").read_text())
    assert rec["passed"] and rec["tokens_match_share"] == 1.0 and rec["parity"]["sentences"] == 8
    assert max(len(r["pytorch"]) for r in rec["parity"]["rows"]) >= 3  # several steps through the cache
    enc_s, dec_s, past_s = (ort.InferenceSession(str(folder / f)) for f in
                            ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"))
    assert [i.name for i in enc_s.get_inputs()] == ["input_ids", "attention_mask"]
    assert [i.name for i in dec_s.get_inputs()] == ["input_ids", "encoder_attention_mask", "encoder_hidden_states"]
    assert [o.name for o in dec_s.get_outputs()][:5] == ["logits", "present.0.decoder.key", "present.0.decoder.value",
                                                         "present.0.encoder.key", "present.0.encoder.value"]
    assert [i.name for i in past_s.get_inputs()][2:6] == ["past_key_values.0.decoder.key", "past_key_values.0.decoder.value",
                                                          "past_key_values.0.encoder.key", "past_key_values.0.encoder.value"]
    # one teacher-forced step through the ONNX graphs against PyTorch's logits, batch of 2 with padding
    student = AutoModelForSeq2SeqLM.from_pretrained(str(run / "student")).eval()
    enc = tok([s for s, _ in held[:2]], return_tensors="np", padding=True)
    hidden = enc_s.run(None, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0]
    start = [[student.config.decoder_start_token_id]] * 2
    import numpy as np

    logits = dec_s.run(["logits"], {"input_ids": np.asarray(start, dtype=np.int64),
                                    "encoder_attention_mask": enc["attention_mask"], "encoder_hidden_states": hidden})[0]
    with torch.no_grad():
        ref = student(input_ids=torch.from_numpy(enc["input_ids"]), attention_mask=torch.from_numpy(enc["attention_mask"]),
                      decoder_input_ids=torch.tensor(start)).logits.numpy()
    assert np.abs(logits - ref).max() < 1e-4


def test_builtin_seq2seq_teacher_ships_and_loads():
    from edgekd.models.loading import SEQ2SEQ, load_teacher

    model, tok, kind = load_teacher("builtin-seq2seq")
    assert kind == SEQ2SEQ and type(model).__name__ == "MarianMTModel"
    ids = tok("Permission denied")["input_ids"]
    assert ids[-1] == tok.eos_token_id == model.config.eos_token_id
    assert model.config.decoder_start_token_id == tok.pad_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Permission denied"
