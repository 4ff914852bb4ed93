"""The progressive, sequence-level and cached-offline schemes wired into `edgekd.distill.run` (tiny models)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from edgekd.distill import DistillConfig, run


def _cfg(teacher_dir, text_dir, out, **kw):
    base = dict(teacher=str(teacher_dir), data=str(text_dir), out=str(out), steps=4, seq_len=32, batch_size=2,
                eval_blocks=4, quiet=True, threads=1)
    base.update(kw)
    return DistillConfig(**base)


def _report(out):
    return json.loads((out / "report.json").read_text()), json.loads((out / "config.json").read_text())


def test_progressive_run_is_a_chain_of_shrinking_students(teacher_dir, text_dir, tmp_path):
    student = {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
               "num_key_value_heads": 2}
    out = run(_cfg(teacher_dir, text_dir, tmp_path / "run", steps=5, scheme="progressive", student=student)).out
    rep, cfg = _report(out)
    stages = rep["distillation"]["stages"]
    assert len(stages) >= 2
    params = [rep["teacher"]["params"]] + [s["params"] for s in stages]
    assert all(a > b for a, b in zip(params, params[1:])), params
    assert sum(s["steps"] for s in stages) == 5 and all(s["steps"] >= 1 for s in stages)
    assert all(s["eval_loss"] > 0 for s in stages) and stages[-1]["eval_loss"] == rep["student"]["eval_loss"]
    # the default intermediate stage lies halfway between teacher (4 layers, 64 wide) and student
    assert stages[0]["config"]["num_hidden_layers"] == 3 and stages[0]["config"]["hidden_size"] == 48
    # the last stage is the run's student, with the requested config, and the scratch baseline matches it
    assert stages[-1]["params"] == rep["student"]["params"] == rep["scratch"]["params"]
    from edgekd.models.loading import load_model

    m, _, _ = load_model(out / "student")
    for k, v in student.items():
        assert getattr(m.config, k) == v and stages[-1]["config"][k] == v
    assert [s["config"] for s in cfg["progressive"]["stages"]] == [s["config"] for s in stages]
    assert (out / "checkpoints" / "distill-stage1").is_dir() and (out / "checkpoints" / "distill").is_dir()
    assert "## Progressive stages" in (out / "report.md").read_text()


def test_progressive_explicit_sizes_and_bad_sizes(teacher_dir, text_dir, tmp_path):
    from edgekd.errors import EdgekdError

    sizes = [{"num_hidden_layers": 3}, {"num_hidden_layers": 2, "intermediate_size": 96}]
    out = run(_cfg(teacher_dir, text_dir, tmp_path / "run", steps=3, scheme="progressive", baselines="none",
                   scheme_config={"sizes": sizes})).out
    stages = _report(out)[0]["distillation"]["stages"]
    assert [s["config"]["num_hidden_layers"] for s in stages] == [3, 2, 2]
    assert stages[1]["config"]["intermediate_size"] == 96 and [s["steps"] for s in stages] == [1, 1, 1]
    with pytest.raises(EdgekdError, match="not smaller"):
        run(_cfg(teacher_dir, text_dir, tmp_path / "bad", steps=3, scheme="progressive", baselines="none",
                 scheme_config={"sizes": [{"num_hidden_layers": 1}]}))  # the default student is not smaller


def _greedy(model, prompt, new, eos):
    ids = prompt[None]
    with torch.no_grad():
        for _ in range(new):
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
            if int(nxt) == eos:
                break
    return ids[0]


def test_sequence_run_trains_on_the_teacher_generations(teacher_dir, text_dir, tmp_path):
    from edgekd.distill import trainer as trainer_mod
    from edgekd.models.loading import load_model

    seen = []
    orig = trainer_mod.Trainer.train_step

    def spy(self):
        if self.label == "distill":
            seen.append(self.stream.batch_at(self.stream.position)["input_ids"])
        return orig(self)

    trainer_mod.Trainer.train_step = spy
    try:
        out = run(_cfg(teacher_dir, text_dir, tmp_path / "run", steps=3, scheme="sequence", baselines="none",
                       scheme_config={"num_prompts": 4, "prompt_len": 8, "max_new_tokens": 12})).out
    finally:
        trainer_mod.Trainer.train_step = orig
    rep, cfg = _report(out)
    info = rep["distillation"]["sequence"]
    assert info == cfg["sequence"] and info["num_sequences"] == 4 and 0 < info["generated_tokens"] <= 4 * 12
    assert f"{info['generated_tokens']} generated tokens" in (out / "report.md").read_text()
    saved = load_file(out / "sequences.safetensors")
    offsets = saved["offsets"].tolist()
    seqs = [saved["tokens"][a:b] for a, b in zip(offsets, offsets[1:])]
    assert len(seqs) == 4 and saved["prompt_lengths"].tolist() == [8] * 4
    assert sum(len(s) - 8 for s in seqs) == info["generated_tokens"]
    teacher, tok, _ = load_model(teacher_dir)
    for s in seqs[:2]:  # the teacher's greedy continuation of its prompt
        assert torch.equal(s, _greedy(teacher, s[:8], 12, tok.eos_token_id))
    # the student was trained on blocks of those sequences joined with EOS, not on the corpus
    stream = torch.cat([torch.cat([s, torch.tensor([tok.eos_token_id])]) if int(s[-1]) != tok.eos_token_id else s
                        for s in seqs])
    assert info["train_tokens"] == stream.numel()
    blocks = {tuple(b.tolist()) for b in stream[: stream.numel() // 32 * 32].view(-1, 32)}
    assert len(seen) == 3 and all(tuple(r.tolist()) in blocks for b in seen for r in b)


def test_offline_cache_is_built_by_the_first_run_and_reused_by_the_next(teacher_dir, text_dir, tmp_path):
    cache = tmp_path / "cache"
    sc = {"cache": str(cache), "cache_k": 8}
    out1 = run(_cfg(teacher_dir, text_dir, tmp_path / "r1", baselines="none", scheme_config=sc)).out
    index = json.loads((cache / "index.json").read_text())
    shards = sorted(cache.glob("shard-*.safetensors"))
    assert shards and index["k"] == 8 and index["num_examples"] > 0
    stamps = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in [cache / "index.json", *shards]}
    rep1, cfg1 = _report(out1)
    assert cfg1["teacher_cache"] == {"path": str(cache), "built": True}

    out2 = run(_cfg(teacher_dir, text_dir, tmp_path / "r2", baselines="none", scheme_config=sc)).out
    rep2, cfg2 = _report(out2)
    assert cfg2["teacher_cache"]["built"] is False and rep2["distillation"]["teacher_cache"]["built"] is False
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in [cache / "index.json", *shards]} == stamps
    h1 = json.loads(sorted((out1 / "checkpoints" / "distill").glob("step_*"))[-1].joinpath("trainer.json").read_text())
    h2 = json.loads(sorted((out2 / "checkpoints" / "distill").glob("step_*"))[-1].joinpath("trainer.json").read_text())
    assert [h["loss"] for h in h1["history"]] == [h["loss"] for h in h2["history"]]
    assert rep1["student"]["eval_loss"] == rep2["student"]["eval_loss"]


def test_progressive_run_resumes_mid_chain_to_the_same_student(teacher_dir, text_dir, tmp_path, monkeypatch):
    from edgekd.distill import trainer as trainer_mod

    kw = dict(steps=4, scheme="progressive", baselines="none", checkpoint_every=1)
    whole = run(_cfg(teacher_dir, text_dir, tmp_path / "whole", **kw)).out
    orig = trainer_mod.Trainer.train_step

    def boom(self):
        if self.label == "distill 2/2" and self.step == 1:
            raise KeyboardInterrupt("injected")
        return orig(self)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", boom)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(teacher_dir, text_dir, tmp_path / "cut", **kw))
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", orig)
    cut = run(DistillConfig(out=str(tmp_path / "cut"), resume=True, quiet=True)).out
    a, b = load_file(whole / "student" / "model.safetensors"), load_file(cut / "student" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _report(whole)[0]["distillation"]["stages"] == _report(cut)[0]["distillation"]["stages"]
