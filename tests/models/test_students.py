import json

import pytest
import torch

from edgekd.errors import EdgekdError
from edgekd.models.loading import load_model
from edgekd.models.students import (build_student, check_tokenizers_agree, count_params, default_student_config,
                                    select_layers, student_config_from)
from edgekd.data.batching import BlockStream, encode_texts
from tests.distill.helpers import small_texts


def _calib(tok, n=3, seq=32):
    s = BlockStream(encode_texts(small_texts(4), tok), seq, 4, seed=5)
    return [s.next() for _ in range(n)]


def test_select_layers_every_kth():
    assert select_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert select_layers(4, 2) == [0, 2]
    assert select_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(EdgekdError):
        select_layers(2, 3)


def test_default_student_is_about_half(teacher_dir):
    t, _, _ = load_model(teacher_dir)
    c = default_student_config(t.config)
    assert c.num_hidden_layers == 2 and c.hidden_size == 32 and c.num_attention_heads == 2
    assert c.intermediate_size == 64 and c.vocab_size == t.config.vocab_size


def test_depth_only_student_copies_the_chosen_teacher_layers(teacher_dir):
    t, tok, _ = load_model(teacher_dir)
    s, info = build_student(t, student_config_from({"num_hidden_layers": 2}, t.config), _calib(tok))
    assert info["layers"] == [0, 2]
    for si, ti in enumerate(info["layers"]):
        for (n1, p1), (n2, p2) in zip(s.model.layers[si].named_parameters(), t.model.layers[ti].named_parameters()):
            assert n1 == n2 and torch.equal(p1, p2)
    assert torch.equal(s.lm_head.weight, t.lm_head.weight)


@torch.no_grad()
def test_pruned_student_approximates_teacher_better_than_random(teacher_dir):
    t, tok, _ = load_model(teacher_dir)
    cfg = student_config_from({"hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 3,
                               "intermediate_size": 96, "num_hidden_layers": 4}, t.config)
    calib = _calib(tok)
    pruned, info = build_student(t, cfg, calib)
    rand, _ = build_student(t, cfg, None, init="random")
    assert info["method"] == "teacher" and len(info["heads_kept"][0]) == 3
    x = _calib(tok, n=1, seq=48)[0]["input_ids"]
    p = torch.log_softmax(t(input_ids=x).logits, -1)

    def kl(m):
        q = torch.log_softmax(m(input_ids=x).logits, -1)
        return float((p.exp() * (p - q)).sum(-1).mean())

    assert kl(pruned) < kl(rand)


def test_student_vocab_mismatch_is_an_error(teacher_dir, tmp_path):
    t, _, _ = load_model(teacher_dir)
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"vocab_size": t.config.vocab_size + 1}))
    with pytest.raises(EdgekdError, match="tokenizer"):
        student_config_from(str(f), t.config)


def test_tokenizer_mismatch_is_an_error(teacher_dir):
    from edgekd.data.tokenizer import train_tokenizer

    _, tok, _ = load_model(teacher_dir)
    other = train_tokenizer(["completely different text " * 50, "zzz yyy"], vocab_size=len(tok))
    with pytest.raises(EdgekdError, match="tokenizer differs"):
        check_tokenizers_agree(tok, other)
    check_tokenizers_agree(tok, tok)


def test_gqa_teacher_prunes_by_kv_group(tmp_path):
    from tests.distill.helpers import tiny_teacher

    d = tiny_teacher(tmp_path / "gqa", heads=4, kv_heads=2, train_steps=2)
    t, tok, _ = load_model(d)
    cfg = default_student_config(t.config)
    assert cfg.num_attention_heads == 2 and cfg.num_key_value_heads == 1
    s, info = build_student(t, cfg, _calib(tok, n=1))
    assert info["method"] == "teacher" and count_params(s) < count_params(t)
    s(input_ids=torch.zeros(1, 8, dtype=torch.long))
