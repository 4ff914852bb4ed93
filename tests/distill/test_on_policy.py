"""The on_policy (GKD) scheme end to end on tiny models: λ = 0 is offline KD bit for bit, λ = 1 trains only on
the student's samples (labels on the sampled tokens alone, the divergence alone), one teacher forward per
batch over prompt + sample, the options recorded in config.json and report.json."""

import json

import pytest
import torch
from safetensors.torch import load_file

from edgekd.distill import DistillConfig, run
from edgekd.distill.schemes import on_policy as op
from edgekd.errors import EdgekdError

JSD = [{"name": "kd", "divergence": "jsd", "beta": 0.5}]


def _cfg(teacher_dir, text_dir, out, **kw):
    base = dict(teacher=str(teacher_dir), data=str(text_dir), out=str(out), steps=3, seq_len=32, batch_size=2,
                eval_blocks=4, quiet=True, threads=1, baselines="none")
    base.update(kw)
    return DistillConfig(**base)


def _report(out):
    return json.loads((out / "report.json").read_text()), json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("lmbda", [0.0, 0.1, 0.25, 1 / 3, 0.5, 0.7, 1.0])
def test_a_share_lambda_of_the_steps_is_on_policy(lmbda):
    for n in (1, 7, 30, 100):
        assert sum(op.on_policy_step(i, lmbda) for i in range(n)) == int(n * lmbda + 1e-9)


def test_lambda_zero_is_offline_kd_bit_for_bit(teacher_dir, text_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(op.OnPolicyScheme, "sample", lambda self, *a: calls.append(a))
    off = run(_cfg(teacher_dir, text_dir, tmp_path / "offline", loss=JSD)).out
    onp = run(_cfg(teacher_dir, text_dir, tmp_path / "on0", loss=JSD, scheme="on_policy",
                   scheme_config={"lmbda": 0})).out
    a, b = load_file(off / "student" / "model.safetensors"), load_file(onp / "student" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = _report(off)[0], _report(onp)[0]
    assert ra["student"]["eval_loss"] == rb["student"]["eval_loss"]
    assert not calls and rb["distillation"]["on_policy"]["on_policy_steps"] == 0


def test_lambda_one_trains_only_on_the_student_samples(teacher_dir, text_dir, tmp_path, monkeypatch):
    seen, teacher_inputs, alphas, generated_by = [], [], [], []
    orig_batch, orig_teacher = op.OnPolicyScheme.training_batch, op.OnPolicyScheme.teacher_outputs
    from edgekd.distill.schemes import sequence

    real_gen = sequence.generate_sequence_data

    def spy_batch(self, student, batch, step):
        out = orig_batch(self, student, batch, step)
        seen.append((batch, out))
        return out

    def spy_teacher(self, batch, student_out):
        hook = self.teacher.register_forward_hook(lambda m, args, kw, o: teacher_inputs.append(kw["input_ids"]),
                                                  with_kwargs=True)
        try:
            out = orig_teacher(self, batch, student_out)
        finally:
            hook.remove()
        alphas.append([t.alpha for t, _ in self._alphas])
        return out

    def spy_gen(model, *a, **kw):
        generated_by.append(model)
        return real_gen(model, *a, **kw)

    monkeypatch.setattr(op.OnPolicyScheme, "training_batch", spy_batch)
    monkeypatch.setattr(op.OnPolicyScheme, "teacher_outputs", spy_teacher)
    monkeypatch.setattr(sequence, "generate_sequence_data", spy_gen)
    opts = {"lmbda": 1.0, "prompt_len": 10, "max_new_tokens": 14, "sample_temperature": 1.3}
    out = run(_cfg(teacher_dir, text_dir, tmp_path / "on1", loss=JSD, alpha=0.6, scheme="on_policy",
                   scheme_config=opts)).out
    assert len(seen) == 3 and len(generated_by) == 3 and len(alphas) == 3
    for (orig, got), t_ids in zip(seen, teacher_inputs):
        ids, labels, mask = got["input_ids"], got["labels"], got["attention_mask"]
        assert torch.equal(ids[:, :10], orig["input_ids"][:, :10])  # the prompt: the batch's first tokens
        assert 10 < ids.shape[1] <= 24
        assert (labels[:, :10] == -100).all()  # no loss on the prompt
        on = mask.bool() & (torch.arange(ids.shape[1]) >= 10)
        assert torch.equal(labels[on], ids[on]) and (labels[~on] == -100).all()  # loss on every sampled token
        assert not torch.equal(ids, orig["input_ids"][:, :ids.shape[1]])  # not the corpus continuation
        assert torch.equal(t_ids.cpu(), ids)  # one teacher forward, over prompt + sample
    assert len(teacher_inputs) == 3
    assert all(a == [1.0] for a in alphas)  # the divergence alone on the student's samples
    from edgekd.models.loading import load_model

    teacher, _, _ = load_model(teacher_dir)
    n_teacher = sum(p.numel() for p in teacher.parameters())
    assert all(sum(p.numel() for p in m.parameters()) != n_teacher for m in generated_by)  # the student samples
    rep, cfg = _report(out)
    want = opts | {"steps": 3, "on_policy_steps": 3}
    assert rep["distillation"]["on_policy"] == cfg["on_policy"] == want
    assert "3 of 3 steps (λ = 1.0)" in (out / "report.md").read_text()


def test_mixed_lambda_alternates_and_restores_alpha(teacher_dir, text_dir, tmp_path, monkeypatch):
    record = []
    orig = op.OnPolicyScheme.training_batch

    def spy(self, student, batch, step):
        out = orig(self, student, batch, step)
        record.append((out is batch, [t.alpha for t, _ in self._alphas]))
        return out

    monkeypatch.setattr(op.OnPolicyScheme, "training_batch", spy)
    out = run(_cfg(teacher_dir, text_dir, tmp_path / "mix", steps=4, alpha=0.6, scheme="on_policy",
                   scheme_config={"lmbda": 0.5, "max_new_tokens": 4})).out
    assert record == [(True, [0.6]), (False, [1.0]), (True, [0.6]), (False, [1.0])]
    assert _report(out)[0]["distillation"]["on_policy"]["on_policy_steps"] == 2


@pytest.mark.parametrize("opts,match", [({"lmbda": 1.5}, "lmbda must be a number in"),
                                        ({"prompt_len": 32}, "prompt_len must be an integer in"),
                                        ({"max_new_tokens": 0}, "max_new_tokens"),
                                        ({"sample_temperature": 0}, "sample_temperature"),
                                        ({"lmbda": 0.5, "beta": 0.5}, "unknown option 'beta'")])
def test_bad_options_are_one_clear_error_before_training(teacher_dir, text_dir, tmp_path, opts, match):
    out = tmp_path / "bad"
    with pytest.raises(EdgekdError, match=match):
        run(_cfg(teacher_dir, text_dir, out, scheme="on_policy", scheme_config=opts))
    assert not (out / "config.json").exists()
