"""Each loss against an independent computation, on tiny randomly initialised models."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from edgekd import kernels
from edgekd.errors import EdgekdError
from edgekd.losses import LOSSES, LossInputs, TopKLogits, auto_temperature, build_loss, forward_for_loss, register_loss
from edgekd.losses.base import even_hidden_map, even_layer_map

V = 48


def llama(layers, hidden, heads=2, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=64,
                      attn_implementation="eager")
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def pair():
    return llama(2, 16, seed=1), llama(4, 32, heads=4, seed=2)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def run(model, batch, **kw):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"])
def test_kd_equals_reference_on_shifted_rows(pair, batch, divergence):
    s_model, t_model = pair
    so, to = run(s_model, batch), run(t_model, batch)
    loss_fn = build_loss([{"name": "kd", "temperature": 3.0, "alpha": 0.3, "divergence": divergence, "beta": 0.2,
                           "skew": 0.2}], s_model.config, t_model.config)
    total, parts = loss_fn(so, to, batch["labels"])
    s = so.logits[:, :-1].reshape(-1, V)
    t = to.logits[:, :-1].reshape(-1, V)
    want = kernels.kd_loss_reference(s, t, batch["labels"][:, 1:].reshape(-1), temperature=3.0, alpha=0.3,
                                     divergence=divergence, beta=0.2, skew=0.2)
    torch.testing.assert_close(total, want, rtol=1e-5, atol=1e-6)
    assert set(parts) == {"kd"}


def test_default_spec_is_the_sweeps_best(pair, batch):
    s_model, t_model = pair
    loss_fn = build_loss(None, s_model.config, t_model.config)
    assert (loss_fn.temperature, loss_fn.alpha) == (1.0, 0.7) and loss_fn.causal
    so, to = run(s_model, batch), run(t_model, batch)
    want = kernels.kd_loss_reference(so.logits[:, :-1], to.logits[:, :-1], batch["labels"][:, 1:],
                                     temperature=1.0, alpha=0.7)
    torch.testing.assert_close(loss_fn(so, to, batch["labels"])[0], want, rtol=1e-5, atol=1e-6)


def test_classification_logits_are_not_shifted():
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, intermediate_size=32, num_attention_heads=2, max_position_embeddings=32, num_labels=3)
    s = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=1, **cfg))
    t = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=2, **cfg))
    ids = torch.randint(0, V, (4, 6))
    labels = torch.tensor([0, 2, 1, 2])
    so, to = s(ids), t(ids)
    loss_fn = build_loss([{"name": "kd", "alpha": 0.7}], s.config, t.config)
    assert not loss_fn.causal
    want = kernels.kd_loss_reference(so.logits, to.logits, labels, temperature=2.0, alpha=0.7)
    torch.testing.assert_close(loss_fn(so, to, labels)[0], want, rtol=1e-5, atol=1e-6)


def test_mse_logits_value(pair, batch):
    s_model, t_model = pair
    so, to = run(s_model, batch), run(t_model, batch)
    total, _ = build_loss([{"name": "mse_logits", "alpha": 0.25}], s_model.config, t_model.config)(so, to, batch["labels"])
    s = so.logits[:, :-1].reshape(-1, V).double()
    t = to.logits[:, :-1].reshape(-1, V).double()
    lab = batch["labels"][:, 1:].reshape(-1)
    keep = lab != -100
    ce = F.cross_entropy(s[keep], lab[keep], reduction="none")
    want = (0.25 * ((s[keep] - t[keep]) ** 2).mean(-1) + 0.75 * ce).mean()
    torch.testing.assert_close(total.double(), want, rtol=1e-5, atol=1e-6)


def test_ce_loss_is_hard_label_cross_entropy(pair, batch):
    s_model, _ = pair
    so = run(s_model, batch)
    loss_fn = build_loss([{"name": "ce"}], s_model.config, s_model.config)
    assert not loss_fn.needs_teacher
    want = F.cross_entropy(so.logits[:, :-1].reshape(-1, V), batch["labels"][:, 1:].reshape(-1))
    torch.testing.assert_close(loss_fn(so, None, batch["labels"])[0], want)


def test_weighted_sum_is_sum_of_weighted_parts(pair, batch):
    s_model, t_model = pair
    so = run(s_model, batch, output_hidden_states=True, output_attentions=True)
    to = run(t_model, batch, output_hidden_states=True, output_attentions=True)
    spec = [{"name": "kd", "weight": 1.0}, {"name": "mse_logits", "weight": 0.5},
            {"name": "feature", "weight": 0.1, "distance": "cosine"},
            {"name": "attention", "weight": 0.2, "distance": "kl"}, {"name": "relation", "weight": 0.3},
            {"name": "kd", "weight": 2.0, "divergence": "reverse_kl"}]
    loss_fn = build_loss(spec, s_model.config, t_model.config)
    assert loss_fn.needs_hidden_states and loss_fn.needs_attentions
    total, parts = loss_fn(so, to, batch["labels"], batch["attention_mask"])
    assert list(parts) == ["kd", "mse_logits", "feature", "attention", "relation", "kd_2"]
    torch.testing.assert_close(total.detach(), sum(parts.values()))
    for entry, key in zip(spec, parts):
        alone = build_loss([{**entry, "weight": 1.0}], s_model.config, t_model.config)
        alone.terms[entry["name"]].load_state_dict(loss_fn.terms[key].state_dict())  # same projections
        value, _ = alone(so, to, batch["labels"], batch["attention_mask"])
        torch.testing.assert_close(parts[key], entry["weight"] * value.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("distance", ["mse", "cosine"])
def test_feature_gradients_reach_the_projection(pair, batch, distance):
    s_model, t_model = pair
    loss_fn = build_loss([{"name": "feature", "distance": distance, "layer_map": {"1": 2, "2": -1}}],
                         s_model.config, t_model.config)
    assert [tuple(p.shape) for p in loss_fn.parameters()] == [(32, 16), (32,)] * 2
    so = run(s_model, batch, output_hidden_states=True)
    with torch.no_grad():
        to = run(t_model, batch, output_hidden_states=True)
    total, _ = loss_fn(so, to, batch["labels"], batch["attention_mask"])
    assert total > 0
    total.backward()
    for p in loss_fn.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert s_model.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0
    # The value is the mapped layers' mean of the masked per-token distance.
    hs, ht, keep = so.hidden_states, to.hidden_states, batch["attention_mask"].bool()
    per = []
    for s_i, t_i in ((1, 2), (2, 4)):
        p = loss_fn.terms["feature"].proj[str(s_i)](hs[s_i])
        d = (p - ht[t_i]).pow(2).mean(-1) if distance == "mse" else 1 - F.cosine_similarity(p, ht[t_i], dim=-1)
        per.append(d[keep].mean())
    torch.testing.assert_close(total, torch.stack(per).mean())
    s_model.zero_grad()


def test_default_layer_maps_are_evenly_spaced():
    assert even_hidden_map(2, 4) == {0: 0, 1: 2, 2: 4}
    assert even_hidden_map(3, 12) == {0: 0, 1: 4, 2: 8, 3: 12}
    assert even_layer_map(2, 4) == {0: 1, 1: 3}
    assert even_layer_map(4, 4) == {0: 0, 1: 1, 2: 2, 3: 3}


@pytest.mark.parametrize("spec", [{"name": "attention", "distance": "mse"}, {"name": "attention", "distance": "kl"},
                                  {"name": "relation"}, {"name": "relation", "layer_map": {"0": 0, "1": 1}}])
def test_attention_and_relation_zero_for_identical_positive_otherwise(pair, batch, spec):
    s_model, t_model = pair
    out = run(s_model, batch, output_hidden_states=True, output_attentions=True)
    same = build_loss([spec], s_model.config, s_model.config)
    zero, _ = same(out, out, batch["labels"], batch["attention_mask"])
    assert abs(zero.item()) < 1e-8
    other = run(t_model, batch, output_hidden_states=True, output_attentions=True)
    diff = build_loss([spec], s_model.config, t_model.config)
    value, _ = diff(out, other, batch["labels"], batch["attention_mask"])
    assert value.item() > 1e-6


def test_relation_ignores_padded_tokens(pair, batch):
    s_model, t_model = pair
    so = run(s_model, batch, output_hidden_states=True)
    to = run(t_model, batch, output_hidden_states=True)
    loss_fn = build_loss([{"name": "relation"}], s_model.config, t_model.config)
    base, _ = loss_fn(so, to, batch["labels"], batch["attention_mask"])
    noisy = list(to.hidden_states)
    noisy[-1] = noisy[-1].clone()
    noisy[-1][2, 4:] = torch.randn_like(noisy[-1][2, 4:]) * 100  # row 2 is padded from 4 on
    again, _ = loss_fn(so, LossInputs(hidden_states=tuple(noisy)), batch["labels"], batch["attention_mask"])
    torch.testing.assert_close(base, again)
    # Without a mask it falls back to labels != -100: the same tokens here.
    torch.testing.assert_close(loss_fn(so, to, batch["labels"])[0], base)


def test_attention_heads_averaged_when_counts_differ(pair, batch):
    s_model, t_model = pair  # 2 heads against 4
    so = run(s_model, batch, output_attentions=True)
    to = run(t_model, batch, output_attentions=True)
    loss_fn = build_loss([{"name": "attention", "layer_map": {"1": 3}}], s_model.config, t_model.config)
    value, _ = loss_fn(so, to, batch["labels"], batch["attention_mask"])
    a_s, a_t = so.attentions[1].mean(1), to.attentions[3].mean(1)
    want = (a_s - a_t).pow(2).sum(-1)[batch["attention_mask"].bool()].mean()
    torch.testing.assert_close(value, want)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_topk_teacher_equals_live_teacher_restricted_to_kept_entries(pair, batch, divergence):
    s_model, t_model = pair
    so, to = run(s_model, batch), run(t_model, batch)
    k = 5
    loss_fn = build_loss([{"name": "kd", "divergence": divergence, "alpha": 0.6, "temperature": 2.0}], s_model.config,
                         t_model.config)
    sparse, _ = loss_fn(so, TopKLogits.from_logits(to.logits, k), batch["labels"])
    kth = to.logits.topk(k, -1).values[..., -1:]
    restricted = to.logits.masked_fill(to.logits < kth, float("-inf"))
    live, _ = loss_fn(so, LossInputs(logits=restricted), batch["labels"])
    torch.testing.assert_close(sparse, live, rtol=1e-5, atol=1e-6)
    if divergence == "forward_kl":  # the documented formula, by hand
        s = so.logits[:, :-1].reshape(-1, V).double() / 2
        vals, idx = to.logits[:, :-1].reshape(-1, V).double().topk(k, -1)
        p = torch.softmax(vals / 2, -1)
        kl = 4 * (p * (p.log() - torch.log_softmax(s, -1).gather(1, idx))).sum(-1)
        lab = batch["labels"][:, 1:].reshape(-1)
        ce = F.cross_entropy(s * 2, lab.clamp(min=0), reduction="none")
        keep = lab != -100
        want = (0.6 * kl + 0.4 * ce)[keep].mean()
        torch.testing.assert_close(sparse.double(), want, rtol=1e-5, atol=1e-6)


def test_mse_logits_on_topk_uses_kept_entries(pair, batch):
    s_model, t_model = pair
    so, to = run(s_model, batch), run(t_model, batch)
    top = TopKLogits.from_logits(to.logits, 4)
    value, _ = build_loss([{"name": "mse_logits", "alpha": 1.0}], s_model.config, t_model.config)(so, top, batch["labels"])
    s = so.logits[:, :-1].gather(-1, top.indices[:, :-1])
    keep = batch["labels"][:, 1:] != -100
    want = (s - top.values[:, :-1]).pow(2).mean(-1)[keep].mean()
    torch.testing.assert_close(value, want)


def test_fused_linear_matches_kd_on_full_logits(pair, batch):
    s_model, t_model = pair
    spec = {"temperature": 1.5, "alpha": 0.4, "divergence": "jsd"}
    fused = build_loss([{"name": "kd_fused_linear", "chunk_size": 7, **spec}], s_model.config, t_model.config)
    assert fused.needs_last_hidden and not fused.needs_logits and not fused.needs_hidden_states
    so, to = forward_for_loss(s_model, batch, fused), forward_for_loss(t_model, batch, fused)
    assert so.logits is None and so.lm_head_weight is s_model.lm_head.weight
    value, _ = fused(so, to, batch["labels"])
    plain = build_loss([{"name": "kd", **spec}], s_model.config, t_model.config)
    want, _ = plain(run(s_model, batch), run(t_model, batch), batch["labels"])
    torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-6)
    value.backward()
    assert s_model.lm_head.weight.grad.abs().sum() > 0 and t_model.lm_head.weight.grad is None
    s_model.zero_grad()


@pytest.mark.parametrize("teacher", ["live", "topk", "mixture"])
def test_default_kd_reads_hidden_states_for_causal_lms(pair, batch, teacher):
    """The default 'kd' loss on a causal LM asks for final hidden states and heads, not logits, and equals
    the float64 reference over the full logits, with the teacher live (its hidden states and head), as an
    offline cache's top-k, or as a mixture's logits; gradients reach the student's head and body alike."""
    from edgekd.losses import TeacherMixture

    s_model, t_model = pair
    loss_fn = build_loss(None, s_model.config, t_model.config)
    assert loss_fn.needs_last_hidden and not loss_fn.needs_logits
    so = forward_for_loss(s_model, batch, loss_fn)
    assert so.logits is None
    full_t = run(t_model, batch).logits.detach()
    if teacher == "live":
        to, dense = forward_for_loss(t_model, batch, loss_fn), full_t
    elif teacher == "topk":
        to = TopKLogits.from_logits(full_t, 5)
        dense = torch.full_like(full_t, float("-inf")).scatter(-1, to.indices, to.values)
    else:
        to, dense = TeacherMixture(logits=full_t, members=None), full_t
    value, parts = loss_fn(so, to, batch["labels"])
    value.backward()
    got = [p.grad.clone() for p in (s_model.lm_head.weight, s_model.model.embed_tokens.weight)]
    s_model.zero_grad()
    want = kernels.kd_loss_reference(run(s_model, batch).logits[:, :-1].double(), dense[:, :-1].double(),
                                     batch["labels"][:, 1:], temperature=1.0, alpha=0.7)
    want.backward()
    torch.testing.assert_close(value.double(), want, rtol=1e-5, atol=1e-6)
    for a, p in zip(got, (s_model.lm_head.weight, s_model.model.embed_tokens.weight)):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
    s_model.zero_grad()


def test_kd_fused_linear_false_reads_logits(pair, batch):
    s_model, t_model = pair
    loss_fn = build_loss([{"name": "kd", "fused_linear": False}], s_model.config, t_model.config)
    assert loss_fn.needs_logits and not loss_fn.needs_last_hidden
    with pytest.raises(EdgekdError, match="fused_linear"):
        build_loss([{"name": "kd", "fused_linear": "yes"}], s_model.config, t_model.config)


def test_response_losses_declare_the_run_temperature():
    from edgekd.losses import LossTerm, response_loss_names, takes_run_temperature

    assert set(response_loss_names()) == {"kd", "mse_logits", "kd_fused_linear", "uld", "token_align"}
    assert not takes_run_temperature("ce") and not takes_run_temperature("no_such_loss")
    try:
        @register_loss("_test_response")
        class _Resp(LossTerm):
            takes_temperature = True

            def __init__(self, setup, temperature=2.0, alpha=0.5):
                super().__init__()

        assert takes_run_temperature("_test_response") and "_test_response" in response_loss_names()
        with pytest.raises(ValueError, match="takes no temperature"):
            @register_loss("_test_bad_response")
            class _Bad(LossTerm):
                takes_temperature = True
    finally:
        LOSSES.pop("_test_response", None)
        LOSSES.pop("_test_bad_response", None)


def test_auto_temperature():
    assert auto_temperature(4000, 1000) == pytest.approx(3.0)
    assert auto_temperature(1000, 1000) == pytest.approx(1.0)
    assert auto_temperature(1000, 4000) == 1.0  # a student not smaller (self-distillation): T = 1, no error
    with pytest.raises(EdgekdError, match="positive parameter counts"):
        auto_temperature(0, 1000)
    s, t = llama(2, 16), llama(4, 32, heads=4)
    n_s, n_t = (sum(p.numel() for p in m.parameters()) for m in (s, t))
    loss_fn = build_loss([{"name": "kd", "temperature": "auto"}], s.config, t.config)
    assert loss_fn.temperature == pytest.approx(math.log2(n_t / n_s) + 1)
    given = build_loss([{"name": "kd", "temperature": "auto"}], s.config, t.config, teacher_params=800, student_params=100)
    assert given.temperature == pytest.approx(4.0)


@pytest.mark.parametrize("spec,match", [
    ([{"name": "kl_magic"}], "unknown loss 'kl_magic'"),
    ([{"name": "kd", "temprature": 2}], "unknown argument 'temprature'"),
    ([{"name": "kd", "alpha": 1.5}], "alpha"),
    ([{"name": "kd", "temperature": 0}], "temperature"),
    ([{"name": "kd", "divergence": "tvd"}], "divergence"),
    ([{"name": "kd", "divergence": "skew_kl", "skew": 1.5}], "skew must be a number in"),
    ([{"name": "kd_fused_linear", "divergence": "skew_reverse_kl", "skew": 0}], "skew must be a number in"),
    ([{"name": "kd", "weight": -1}], "weight"),
    ([{"name": "feature", "distance": "l1"}], "distance"),
    ([{"name": "feature", "layer_map": {"5": 0}}], "layer_map"),
    ([{"name": "attention", "layer_map": {"0": 9}}], "layer_map"),
    ([{"weight": 1.0}], "name"),
    ([], "non-empty"),
])
def test_bad_specs_raise_edgekd_error(pair, spec, match):
    s_model, t_model = pair
    with pytest.raises(EdgekdError, match=match):
        build_loss(spec, s_model.config, t_model.config)


def test_missing_outputs_and_vocab_mismatch_raise_edgekd_error(pair, batch):
    s_model, t_model = pair
    so, to = run(s_model, batch), run(t_model, batch)
    with pytest.raises(EdgekdError, match="attn_implementation='eager'"):
        build_loss([{"name": "attention"}], s_model.config, t_model.config)(so, to, batch["labels"])
    with pytest.raises(EdgekdError, match="hidden_states"):
        build_loss([{"name": "feature"}], s_model.config, t_model.config)(so, to, batch["labels"])
    with pytest.raises(EdgekdError, match="vocabulary"):
        build_loss(None, s_model.config, t_model.config)(so, LossInputs(logits=to.logits[..., :-1]), batch["labels"])
    with pytest.raises(EdgekdError, match="top-k"):
        build_loss([{"name": "relation"}], s_model.config, t_model.config)(
            run(s_model, batch, output_hidden_states=True), TopKLogits.from_logits(to.logits, 3), batch["labels"])


def test_registry_decorator_adds_a_loss(pair, batch):
    @register_loss("zero_test_loss")
    class Zero(LOSSES["ce"]):
        def forward(self, view):
            return view.student("logits", self.name).sum() * 0

    try:
        s_model, _ = pair
        total, parts = build_loss([{"name": "zero_test_loss", "weight": 3}], s_model.config, s_model.config)(
            run(s_model, batch), None, batch["labels"])
        assert total.item() == 0 and list(parts) == ["zero_test_loss"]
        with pytest.raises(ValueError):
            register_loss("zero_test_loss")(Zero)
    finally:
        LOSSES.pop("zero_test_loss")


def test_forward_for_loss_gives_attention_maps_from_an_sdpa_model(batch):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    assert model.config._attn_implementation != "eager"
    loss_fn = build_loss([{"name": "kd"}, {"name": "attention"}], cfg, cfg)
    out = forward_for_loss(model, batch, loss_fn)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 2, 10, 10) and out.hidden_states is None
    rows = out.attentions[1].sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    total, parts = loss_fn(out, out, batch["labels"], batch["attention_mask"])
    assert parts["attention"].abs() < 1e-8
