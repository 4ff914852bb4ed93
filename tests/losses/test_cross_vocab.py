"""Teacher and student with different tokenizers (two byte-level BPEs the tests train): the alignment,
the universal-logit and token-alignment losses against independent formulas, and training through the
offline scheme."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from edgekd.data.alignment import CrossTokenizer
from edgekd.data.tokenizer import train_tokenizer
from edgekd.errors import EdgekdError
from edgekd.losses import LossInputs, build_loss, forward_for_loss
from tests.distill.helpers import small_texts

TEXT = "def distil(teacher, student):\n    return student.fit(teacher)  # café: naïve résumé\n"


@pytest.fixture(scope="module")
def toks():
    texts = small_texts(6) + [TEXT] * 3
    return train_tokenizer(texts, vocab_size=300), train_tokenizer(texts, vocab_size=700)


def _llama(vocab, hidden=32, seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, intermediate_size=2 * hidden,
                                        max_position_embeddings=128))


def test_alignment_pairs_positions_that_read_the_same_prefix(toks):
    s_tok, t_tok = toks
    ids = torch.tensor([s_tok(TEXT)["input_ids"]])
    al = CrossTokenizer(s_tok, t_tok).align(ids)
    assert t_tok.decode(al.teacher_ids[0][al.teacher_mask[0].bool()].tolist()) == TEXT
    S, St = ids.shape[1], al.teacher_ids.shape[1]
    assert 0 < al.pairs < S and St < S  # the larger vocabulary needs fewer tokens; not every position aligns
    for sr, tr in zip(al.student_rows.tolist(), al.teacher_rows.tolist()):
        i, j = sr % S, tr % St
        assert i < S - 1  # a next student token exists
        assert s_tok.decode(ids[0, : i + 1].tolist()) == t_tok.decode(al.teacher_ids[0, : j + 1].tolist())
    # the same tokenizer on both sides pairs every position with itself, but the last and those that end
    # inside one of the text's four two-byte characters
    same = CrossTokenizer(s_tok, s_tok).align(ids)
    assert torch.equal(same.teacher_ids, ids) and torch.equal(same.student_rows, same.teacher_rows)
    assert S - 1 - 4 <= same.pairs <= S - 1


def test_vocab_map_pairs_tokens_with_the_same_string(toks):
    s_tok, t_tok = toks
    vmap = CrossTokenizer(s_tok, t_tok).vocab_map
    assert vmap.shape == (len(s_tok),)
    hits = (vmap >= 0).nonzero().flatten().tolist()
    assert len(hits) == 300  # two byte-level BPEs trained on the same text: the 300 tokens are among the 700
    for i in hits[::7]:
        assert s_tok.convert_ids_to_tokens(i) == t_tok.convert_ids_to_tokens(int(vmap[i]))
        assert s_tok.decode([i]) == t_tok.decode([int(vmap[i])])


def _outputs(toks, seed=0):
    s_tok, t_tok = toks
    ids = torch.tensor([s_tok(TEXT)["input_ids"]] * 2)
    cross = CrossTokenizer(s_tok, t_tok)
    al = cross.align(ids)
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, ids.shape[1], len(s_tok), generator=g, requires_grad=True)
    t = torch.randn(2, al.teacher_ids.shape[1], len(t_tok), generator=g) * 2
    return ids, s, LossInputs(logits=t, alignment=al, vocab_map=cross.vocab_map), al


def test_uld_is_the_sorted_probability_distance(toks):
    ids, s, t_out, al = _outputs(toks)
    cfg_s, cfg_t = LlamaConfig(vocab_size=s.shape[-1]), LlamaConfig(vocab_size=t_out.logits.shape[-1])
    loss = build_loss([{"name": "uld", "temperature": 2.0, "alpha": 0.6}], cfg_s, cfg_t)
    value, _ = loss(LossInputs(logits=s), t_out, ids)
    # independent: per aligned pair, sorted probabilities (zero-padded), L1, mean; + CE over shifted tokens
    d = []
    for sr, tr in zip(al.student_rows.tolist(), al.teacher_rows.tolist()):
        p = sorted(torch.softmax(s.detach().double().reshape(-1, s.shape[-1])[sr] / 2, -1).tolist(), reverse=True)
        q = sorted(torch.softmax(t_out.logits.double().reshape(-1, t_out.logits.shape[-1])[tr] / 2, -1).tolist(),
                   reverse=True)
        p += [0.0] * (len(q) - len(p))
        d.append(sum(abs(a - b) for a, b in zip(p, q)))
    ce = torch.nn.functional.cross_entropy(s.detach().double()[:, :-1].reshape(-1, s.shape[-1]), ids[:, 1:].reshape(-1))
    want = 0.6 * sum(d) / len(d) + 0.4 * float(ce)
    assert float(value) == pytest.approx(want, rel=1e-5)
    value.backward()
    assert s.grad.abs().sum() > 0


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_token_align_is_kd_over_the_shared_vocabulary(toks, divergence):
    ids, s, t_out, al = _outputs(toks, seed=1)
    cfg_s, cfg_t = LlamaConfig(vocab_size=s.shape[-1]), LlamaConfig(vocab_size=t_out.logits.shape[-1])
    loss = build_loss([{"name": "token_align", "temperature": 1.0, "alpha": 1.0, "divergence": divergence}],
                      cfg_s, cfg_t)
    value, _ = loss(LossInputs(logits=s), t_out, ids)
    vmap = t_out.vocab_map.tolist()
    shared = [i for i, j in enumerate(vmap) if j >= 0]
    S2 = s.detach().double().reshape(-1, s.shape[-1])
    T2 = t_out.logits.double().reshape(-1, t_out.logits.shape[-1])
    total = 0.0
    for sr, tr in zip(al.student_rows.tolist(), al.teacher_rows.tolist()):
        p = torch.softmax(T2[tr][[vmap[i] for i in shared]], -1)  # the teacher over the shared tokens
        logq = torch.log_softmax(S2[sr], -1)
        if divergence == "forward_kl":  # KL(p || q), q over the student's whole vocabulary
            total += float((p * (p.log() - logq[shared])).sum())
        else:  # KL(q' || p), the student renormalised over the teacher's support
            q = torch.softmax(S2[sr][shared], -1)
            total += float((q * (q.log() - p.log())).sum())
    assert float(value) == pytest.approx(total / al.pairs, rel=1e-4)


def test_offline_scheme_trains_a_student_with_its_own_tokenizer(toks):
    """End to end through the engine's pieces: the offline scheme re-tokenises each batch for the teacher;
    training with either loss lowers it, and the student's held-out CE in its own tokens goes down."""
    from edgekd.data.batching import BlockStream
    from edgekd.distill.objective import DistillObjective
    from edgekd.distill.schemes import build_scheme
    from edgekd.distill.trainer import TrainConfig, Trainer

    s_tok, t_tok = toks
    ids = torch.tensor(s_tok("\n".join(small_texts(4)))["input_ids"][:6000])
    teacher = _llama(len(t_tok), hidden=48, seed=5).eval().requires_grad_(False)
    for name in ("uld", "token_align"):
        student = _llama(len(s_tok), seed=0)
        loss_fn = build_loss([{"name": name, "alpha": 0.5}], student.config, teacher.config)
        assert loss_fn.needs_alignment
        scheme = build_scheme("offline", teachers=[teacher], student=student)
        scheme.use_loss(loss_fn)
        scheme.use_tokens(CrossTokenizer(s_tok, t_tok))
        stream = BlockStream(ids, 32, 4, seed=0)
        hist = Trainer(student, DistillObjective(loss_fn, scheme, causal=True), stream,
                       TrainConfig(steps=12, batch_size=4, lr=5e-3, warmup_steps=2), None, quiet=True).train()
        assert all(math.isfinite(h["loss"]) for h in hist)
        assert hist[-1]["ce"] < hist[0]["ce"]


def test_schemes_that_cannot_retokenise_say_so(toks):
    from edgekd.distill.schemes import build_scheme

    s_tok, t_tok = toks
    student, teacher = _llama(len(s_tok)), _llama(len(t_tok))
    scheme = build_scheme("online", teachers=[teacher], student=student)
    with pytest.raises(EdgekdError, match="another tokenizer"):
        scheme.use_tokens(CrossTokenizer(s_tok, t_tok))


def test_the_early_checks_know_the_cross_tokenizer_losses():
    """The early check lets a student keep its own vocabulary exactly with a loss whose class aligns tokenizers
    (read from the loss classes, not a list of names beside them)."""
    from edgekd.run_inputs import distill_inputs
    from edgekd.losses import LOSSES, register_loss
    from edgekd.losses.base import LossTerm

    teacher = {"model_type": "llama", "vocab_size": 300, "hidden_size": 64, "num_attention_heads": 4}
    values = {"student": {"vocab_size": 200}, "teacher": "builtin"}
    for name in ("uld", "token_align"):
        distill_inputs(values | {"loss": name}, teacher)
    with pytest.raises(EdgekdError, match="differs from the teacher's 300"):
        distill_inputs(values | {"loss": "kd"}, teacher)

    @register_loss("_test_aligning")
    class Aligning(LossTerm):
        needs_alignment = True

    try:
        distill_inputs(values | {"loss": "_test_aligning"}, teacher)  # a new aligning loss needs no list edited
    finally:
        LOSSES.pop("_test_aligning")
