"""Schemes on tiny Llama models: each does what it says, checked against independent computations."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from edgekd.data.teacher_cache import TeacherCache
from edgekd.distill.schemes import (SCHEMES, SequenceData, build_scheme, ema_update, generate_sequence_data,
                                    stage_configs)
from edgekd.errors import EdgekdError
from edgekd.losses import LossInputs, build_loss, forward_for_loss

V = 40


def llama(layers=2, hidden=16, heads=2, seed=0, vocab=V):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=64,
                      attn_implementation="eager", eos_token_id=1, bos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def blocks(n=6, length=8, seed=0):
    return torch.randint(2, V, (n, length), generator=torch.Generator().manual_seed(seed))


def lm_batch(ids):
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_unknown_scheme_and_option_raise():
    s = llama()
    with pytest.raises(EdgekdError, match="unknown scheme 'distant'"):
        build_scheme("distant", teachers=[llama(seed=1)], student=s)
    with pytest.raises(EdgekdError, match="unknown option 'decy'"):
        build_scheme("self", teachers=[], student=s, decy=0.9)
    with pytest.raises(EdgekdError, match="decay"):
        build_scheme("self", teachers=[], student=s, decay=1.5)
    assert set(SCHEMES) == {"offline", "online", "self", "multi_teacher", "progressive", "sequence", "on_policy"}


def test_offline_teacher_is_frozen_and_mirrors_student_outputs():
    t, s = llama(3, 24, seed=1), llama()
    scheme = build_scheme("offline", teachers=[t], student=s)
    assert not t.training and not any(p.requires_grad for p in t.parameters()) and scheme.extra_parameters() == []
    batch = lm_batch(blocks(2))
    s_out = s(input_ids=batch["input_ids"], output_hidden_states=True)
    out = scheme.teacher_outputs(batch, s_out)
    assert len(out.hidden_states) == 4 and out.attentions is None and out.logits.grad_fn is None
    torch.testing.assert_close(out.logits, t(input_ids=batch["input_ids"]).logits)


def test_cache_round_trip_gives_the_live_teacher_loss_on_kept_entries(tmp_path):
    t, s = llama(3, 24, seed=1), llama()
    data = blocks(7)
    k = 6
    cache = TeacherCache.build(t, data, tmp_path / "cache", k=k, batch_size=3, dtype="float32", shard_examples=3)
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["k"] == k and index["num_examples"] == 7 and len(index["shards"]) == 3
    assert index["shards"][0]["shapes"]["values"] == [24, k] and index["data_hash"] and index["teacher_hash"]
    from safetensors.torch import load_file
    shard = load_file(str(tmp_path / "cache" / "shard-00001.safetensors"))
    assert shard["indices"].dtype == torch.int32 and shard["values"].dtype == torch.float32

    # Through the offline scheme, opened from disk and checked against data and teacher.
    scheme = build_scheme("offline", teachers=[t], student=s, cache=str(tmp_path / "cache"), cache_data=data)
    loss_fn = build_loss([{"name": "kd", "alpha": 0.5, "temperature": 2.0}], s.config, t.config)
    batch = lm_batch(data[[5, 1, 3]])  # rows found by their tokens: no position needed
    s_out = s(input_ids=batch["input_ids"])
    cached = scheme.teacher_outputs(batch, s_out)
    live = t(input_ids=batch["input_ids"]).logits
    kth = live.topk(k, -1).values[..., -1:]
    restricted = live.masked_fill(live < kth, float("-inf"))
    got, _ = loss_fn(s_out, cached, batch["labels"])
    want, _ = loss_fn(s_out, LossInputs(logits=restricted), batch["labels"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # ... and by data position.
    from edgekd.data.batching import BlockStream  # the engine's stream is accepted as the cached data
    stream = BlockStream(data.reshape(-1), seq_len=8, batch_size=2)
    assert TeacherCache.open(tmp_path / "cache", data=stream, teacher=t).k == k
    by_pos = cache.lookup({**batch, "index": torch.tensor([5, 1, 3])})
    torch.testing.assert_close(by_pos.values, cached.values)
    assert torch.equal(by_pos.indices, cached.indices)


def test_cache_fp16_and_padded_rows(tmp_path):
    t = llama(3, 24, seed=1)
    examples = [torch.tensor([5, 6, 7, 8, 9]), torch.tensor([3, 4]), torch.tensor([10, 11, 12])]
    cache = TeacherCache.build(t, examples, tmp_path / "c16", k=4)
    assert cache.index["dtype"] == "float16"
    ids = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.zeros(2, 5, dtype=torch.long)
    ids[0, 2:], mask[0, 2:] = examples[2], 1  # left padded
    ids[1, :2], mask[1, :2] = examples[1], 1  # right padded
    top = cache.lookup({"input_ids": ids, "attention_mask": mask})
    for row, ex, sl in ((0, examples[2], slice(2, 5)), (1, examples[1], slice(0, 2))):
        want = t(input_ids=ex[None]).logits[0].topk(4, -1)
        torch.testing.assert_close(top.values[row, sl], want.values, atol=2e-2, rtol=1e-2)
        assert torch.equal(top.indices[row, sl], want.indices)


def test_cache_for_other_data_or_teacher_is_rejected(tmp_path):
    t = llama(3, 24, seed=1)
    data = blocks(4)
    TeacherCache.build(t, data, tmp_path / "c", k=3)
    with pytest.raises(EdgekdError, match="other data"):
        TeacherCache.open(tmp_path / "c", data=blocks(4, seed=9))
    with pytest.raises(EdgekdError, match="another teacher"):
        TeacherCache.open(tmp_path / "c", teacher=llama(3, 24, seed=2))
    with pytest.raises(EdgekdError, match="other data"):
        build_scheme("offline", teachers=[t], student=llama(), cache=str(tmp_path / "c"), cache_data=blocks(4, seed=9))
    cache = TeacherCache.open(tmp_path / "c", data=data, teacher=t)
    with pytest.raises(EdgekdError, match="not in the teacher cache"):
        cache.lookup(lm_batch(blocks(1, seed=5)))
    with pytest.raises(EdgekdError, match="no index.json"):
        TeacherCache.open(tmp_path / "missing")
    (tmp_path / "c" / "shard-00000.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EdgekdError, match="unreadable"):
        TeacherCache.open(tmp_path / "c").lookup(lm_batch(data[:1]))
    (tmp_path / "c" / "shard-00000.safetensors").unlink()
    with pytest.raises(EdgekdError, match="lacks shard"):
        TeacherCache.open(tmp_path / "c")
    scheme = build_scheme("offline", teachers=[t], student=llama(), cache=cache)
    with pytest.raises(EdgekdError, match="only logits"):
        scheme.teacher_outputs(lm_batch(data[:1]), LossInputs(logits=torch.zeros(1), hidden_states=(torch.zeros(1),)))


def test_multi_teacher_target_is_the_weighted_mean_of_distributions():
    teachers = [llama(2, 16, seed=1), llama(3, 24, seed=2), llama(1, 8, seed=3)]
    s = llama()
    scheme = build_scheme("multi_teacher", teachers=teachers, student=s, weights=[2, 1, 1], temperature=3.0)
    batch = lm_batch(blocks(2))
    out = scheme.teacher_outputs(batch, s(input_ids=batch["input_ids"]))
    T = 3.0
    mixed = sum(w * torch.softmax(m(input_ids=batch["input_ids"]).logits / T, -1)
                for w, m in zip([0.5, 0.25, 0.25], teachers))
    torch.testing.assert_close(torch.softmax(out.logits / T, -1), mixed, rtol=1e-5, atol=1e-7)
    # kd at the same T equals KL against the mixture; at another T the loss re-mixes at its own T.
    loss_fn = build_loss([{"name": "kd", "alpha": 1.0, "temperature": 1.5}], s.config, s.config)
    s_out = s(input_ids=batch["input_ids"])
    got, _ = loss_fn(s_out, out, batch["labels"])
    p = sum(w * torch.softmax(m(input_ids=batch["input_ids"]).logits[:, :-1] / 1.5, -1)
            for w, m in zip([0.5, 0.25, 0.25], teachers)).double()
    q = torch.log_softmax(s_out.logits[:, :-1].double() / 1.5, -1)
    want = 1.5 ** 2 * (p * (p.log() - q)).sum(-1).mean()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_multi_teacher_vocabulary_mismatch_raises():
    with pytest.raises(EdgekdError, match="vocabularies differ"):
        build_scheme("multi_teacher", teachers=[llama(seed=1), llama(seed=2, vocab=V + 8)], student=llama())
    with pytest.raises(EdgekdError, match="weights"):
        build_scheme("multi_teacher", teachers=[llama(seed=1)], student=llama(), weights=[1, 2])


def test_self_scheme_ema_update_math_and_state():
    s = llama()
    scheme = build_scheme("self", teachers=[llama(seed=5)], student=s, decay=0.9)
    before = {k: v.clone() for k, v in scheme.ema.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in s.state_dict().items())
    opt = torch.optim.SGD(s.parameters(), lr=0.5)
    batch = lm_batch(blocks(2))
    s(**batch).loss.backward()
    opt.step()
    scheme.after_step(s, 1)
    for name, p in s.named_parameters():
        torch.testing.assert_close(dict(scheme.ema.named_parameters())[name], 0.9 * before[name] + 0.1 * p.detach())
    assert not any(p.requires_grad for p in scheme.ema.parameters())
    out = scheme.teacher_outputs(batch, LossInputs(logits=torch.zeros(1)))
    torch.testing.assert_close(out.logits, scheme.ema(input_ids=batch["input_ids"]).logits)
    assert scheme.teacher_config is scheme.ema.config and scheme.teacher_config.hidden_size == s.config.hidden_size
    wrong = build_loss([{"name": "feature"}], s.config, llama(2, 24).config)  # built against another teacher
    s_out = s(input_ids=batch["input_ids"], output_hidden_states=True)
    with pytest.raises(EdgekdError, match="scheme.teacher_config"):
        wrong(s_out, scheme.teacher_outputs(batch, s_out), batch["labels"])
    fresh = build_scheme("self", teachers=[], student=llama(seed=7))
    fresh.load_state_dict(scheme.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.ema.state_dict().values(), scheme.ema.state_dict().values()))
    # decay 0 copies the model; decay 1 keeps the average
    other = llama(seed=8)
    ema_update(fresh.ema, other, 1.0)
    assert torch.equal(fresh.ema.lm_head.weight, scheme.ema.lm_head.weight)
    ema_update(fresh.ema, other, 0.0)
    assert torch.equal(fresh.ema.lm_head.weight, other.lm_head.weight)


def test_online_scheme_trains_the_teacher_in_the_trainer_step():
    t, s = llama(2, 24, seed=1), llama()
    scheme = build_scheme("online", teachers=[t], student=s)
    assert t.training and {id(p) for p in scheme.extra_parameters()} == {id(p) for p in t.parameters()}
    loss_fn = build_loss(None, s.config, t.config)
    opt = torch.optim.AdamW(list(s.parameters()) + scheme.extra_parameters(), lr=1e-2)
    batch = lm_batch(blocks(4))
    start = {k: v.clone() for k, v in t.state_dict().items()}
    first_ce = None
    for step in range(6):
        s_out = forward_for_loss(s, batch, loss_fn)
        with torch.no_grad():  # as the engine's trainer calls it
            t_out = scheme.teacher_outputs(batch, s_out)
        total, parts = loss_fn(s_out, t_out, batch["labels"], batch["attention_mask"])
        assert set(parts) == {"kd", "teacher_ce"}
        torch.testing.assert_close(total.detach(), parts["kd"] + parts["teacher_ce"])
        first_ce = parts["teacher_ce"] if first_ce is None else first_ce
        opt.zero_grad()
        total.backward()
        opt.step()
        scheme.after_step(s, step + 1)
    assert parts["teacher_ce"] < first_ce
    assert any(not torch.equal(start[k], v) for k, v in t.state_dict().items())


def test_online_student_loss_does_not_move_the_teacher():
    t, s = llama(2, 24, seed=1), llama()
    scheme = build_scheme("online", teachers=[t], student=s, teacher_weight=0.0)
    loss_fn = build_loss([{"name": "kd"}, {"name": "feature", "weight": 0.5}], s.config, t.config)
    batch = lm_batch(blocks(2))
    s_out = forward_for_loss(s, batch, loss_fn)
    total, parts = loss_fn(s_out, scheme.teacher_outputs(batch, s_out), batch["labels"])
    assert "teacher_ce" not in parts
    total.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in t.parameters())


def test_progressive_stage_configs_shrink_each_stage():
    """The plan's chain: each stage smaller than the one before, derived fields recomputed, bad sizes refused
    before any training (that each stage is taught by the previous one is test_run_schemes' progressive run)."""
    from edgekd.distill.schemes import shrunk_config
    from edgekd.models.students import count_params

    teacher = llama(4, 32, heads=4, seed=1)
    sizes = [{"num_hidden_layers": 3, "hidden_size": 24, "intermediate_size": 48},
             {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
              "num_key_value_heads": 2}]
    student = shrunk_config(shrunk_config(shrunk_config(teacher.config, sizes[0]), sizes[1]), {"num_hidden_layers": 1})
    configs = stage_configs(sizes, teacher, student)
    params = [count_params(LlamaForCausalLM(c)) for c in [teacher.config] + configs]  # built, not the formula
    assert params == sorted(params, reverse=True) and len(set(params)) == 4
    assert configs[0].num_hidden_layers == 3 and configs[1].hidden_size == 16 and configs[-1] is student
    assert configs[1].head_dim == 8  # derived fields recomputed
    with pytest.raises(EdgekdError, match="not smaller"):
        stage_configs([{"num_hidden_layers": 4}], teacher, student)
    with pytest.raises(EdgekdError, match="unknown config field"):
        stage_configs([{"num_layerz": 2}], teacher, student)


def test_sequence_level_returns_the_teacher_generations():
    t = llama(2, 24, seed=1)
    prompts = [[5, 6, 7], [9, 10], [12, 13, 14, 15]]
    data = generate_sequence_data(t, prompts, max_new_tokens=5, batch_size=2, stop_at_eos=False)
    assert len(data) == 3
    for i, p in enumerate(prompts):  # greedy decoding by hand
        ids = torch.tensor([p])
        for _ in range(5):
            nxt = t(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
        assert torch.equal(data.sequences[i], ids[0])
        item = data[i]
        assert (item["labels"][: len(p)] == -100).all() and torch.equal(item["labels"][len(p):], ids[0, len(p):])
    batch = next(data.batches(3, pad_token_id=0))
    assert batch["input_ids"].shape == (3, 9) and batch["attention_mask"].sum().item() == 3 * 5 + 9
    assert data.tokens(eos_token_id=1).numel() == sum(len(x) + 1 for x in data.sequences)


def test_sequence_level_sampling_is_seeded_and_stops_at_eos():
    t = llama(2, 24, seed=1)
    rng = torch.get_rng_state()
    a = generate_sequence_data(t, [[5, 6]] * 3, max_new_tokens=6, do_sample=True, seed=3)
    b = generate_sequence_data(t, [[5, 6]] * 3, max_new_tokens=6, do_sample=True, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(x, y) for x, y in zip(a.sequences, b.sequences))
    scheme = build_scheme("sequence", teachers=[t], student=llama())
    greedy = scheme.generate([[5, 6]], max_new_tokens=6, stop_at_eos=False)
    first = int(greedy.continuation(0)[2])
    stopped = scheme.generate([[5, 6]], max_new_tokens=6, eos_token_id=first)
    cont = stopped.continuation(0)
    assert int(cont[-1]) == first and first not in cont[:-1].tolist() and len(cont) <= 3
    assert isinstance(stopped, SequenceData)


def test_cache_for_a_classifier_serves_padded_rows(tmp_path):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(4)
    t = LlamaForSequenceClassification(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                   num_attention_heads=2, num_key_value_heads=2, num_labels=5,
                                                   pad_token_id=0, max_position_embeddings=64))
    ids = torch.tensor([[4, 5, 6, 0, 0], [7, 8, 9, 10, 11], [12, 13, 0, 0, 0]])
    mask = (ids != 0).long()
    TeacherCache.build(t, {"input_ids": ids, "attention_mask": mask}, tmp_path / "cls", k=3, dtype="float32")
    scheme = build_scheme("offline", teachers=[t], student=llama(), cache=str(tmp_path / "cls"))
    batch = {"input_ids": ids[[2, 0]], "attention_mask": mask[[2, 0]], "labels": torch.tensor([1, 4])}
    top = scheme.teacher_outputs(batch, LossInputs(logits=torch.zeros(2, 5)))
    live = t(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert top.values.shape == (2, 3)
    torch.testing.assert_close(top.values, live.topk(3, -1).values)
    assert torch.equal(top.indices, live.topk(3, -1).indices)


@pytest.mark.parametrize("scheme,loss,cfg", [
    ("online", None, {}),
    ("self", '[{"name": "kd"}, {"name": "mse_logits", "weight": 0.1}]', {"decay": 0.5}),
    ("offline", '[{"name": "kd_fused_linear"}, {"name": "feature", "weight": 0.1}, {"name": "attention", "weight": 0.1}]', {}),
    ("multi_teacher", '[{"name": "kd", "divergence": "jsd"}, {"name": "relation", "weight": 0.1}]', {"weights": [3, 1]}),
])
def test_schemes_and_losses_run_in_the_engine(teacher_dir, text_dir, tmp_path, scheme, loss, cfg):
    from edgekd.distill import run

    out = run({"teacher": str(teacher_dir), "data": str(text_dir), "steps": 2, "out": str(tmp_path / "run"),
               "scheme": scheme, "scheme_config": cfg, "loss": loss, "baselines": "none", "quiet": True, "seq_len": 32,
               "batch_size": 2, "eval_blocks": 2, "teachers": [str(teacher_dir)] if scheme == "multi_teacher" else []}).out
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["eval_loss"] > 0
