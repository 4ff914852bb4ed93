import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from edgekd.data.batching import BlockStream
from edgekd.distill.objective import ce_loss
from edgekd.distill.trainer import TrainConfig, Trainer, lr_at

WORKER = Path(__file__).with_name("train_worker.py")
ROOT = Path(__file__).parents[2]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _worker(*args, check=True):
    r = subprocess.run([sys.executable, str(WORKER), *map(str, args)], env=_env(), capture_output=True, text=True,
                       timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr[-3000:])
    return r


def _tiny(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32))


def _same(a: dict, b: dict, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)


def test_warmup_then_cosine():
    c = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0) and lr_at(99, c) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(i, c) >= lr_at(i + 1, c) for i in range(10, 99))


def test_killed_run_resumes_to_identical_weights(tmp_path):
    """A real SIGKILL after step 7 (last checkpoint: 6), then --resume, equals an uninterrupted run."""
    _worker("-", tmp_path / "full.safetensors")
    r = _worker(tmp_path / "ck", tmp_path / "never", "--kill-at", 7, check=False)
    assert r.returncode == -9 and not (tmp_path / "never").exists()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if not p.name.startswith(".")) == ["step_000006"]
    _worker(tmp_path / "ck", tmp_path / "resumed.safetensors", "--resume")
    _same(load_file(tmp_path / "full.safetensors"), load_file(tmp_path / "resumed.safetensors"))


def test_accumulation_equals_one_big_batch_with_uneven_masks(tmp_path):
    """Micro-batches of 1 with different counted tokens give the big batch's weights (Σ sums / Σ counts)."""
    _worker("-", tmp_path / "big.safetensors", "--mask-some")
    _worker("-", tmp_path / "acc.safetensors", "--mask-some", "--micro1")
    _same(load_file(tmp_path / "big.safetensors"), load_file(tmp_path / "acc.safetensors"), exact=False)
    # and the naive mean of micro-batch means would differ: the masks really are uneven
    from tests.distill.train_worker import MaskedStream

    b = MaskedStream(torch.arange(4000) % 64, 16, 4, seed=2).batch_at(0)
    counts = (b["labels"][:, 1:] != -100).sum(1)
    assert len(set(counts.tolist())) > 1


def test_nan_guard_skips_and_reports_the_step(capsys):
    model = _tiny()
    stream = BlockStream(torch.randint(0, 64, (2000,)), 16, 4, seed=0)
    calls = {"n": 0}

    def objective(m, batch):
        loss = ce_loss(m(input_ids=batch["input_ids"]).logits, batch["labels"], True)
        calls["n"] += 1
        if calls["n"] == 3:  # step 2 produces a NaN
            loss = loss * float("nan")
        return loss, {}

    tr = Trainer(model, objective, stream, TrainConfig(steps=4, warmup_steps=1), None, quiet=False)
    before = {}

    def on_step(step, t):
        if step == 2:
            before.update({k: v.clone() for k, v in model.state_dict().items()})
        if step == 3:
            for k, v in model.state_dict().items():
                assert torch.equal(v, before[k]), "a skipped step changed the weights"

    tr.on_step = on_step
    hist = tr.train()
    assert tr.skipped == [2] and hist[2].get("skipped") and not hist[3].get("skipped")
    assert all(math.isfinite(p.detach().sum().item()) for p in model.parameters())
    assert "step 2" in capsys.readouterr().err  # edgekd's own warning, on stderr


@pytest.mark.slow
def test_torchrun_two_ranks_agree_with_single_process(tmp_path):
    """DDP over gloo, trained with edgekd's default KD loss (hidden states through both heads): both ranks
    end equal, and equal to one process with the same global batch."""
    _worker("-", tmp_path / "single.safetensors", "--mask-some", "--kd")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), "-", str(tmp_path / "ddp.safetensors"), "--mask-some", "--kd"]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = load_file(tmp_path / "ddp.safetensors.rank0"), load_file(tmp_path / "ddp.safetensors.rank1")
    _same(r0, r1)
    _same(r0, load_file(tmp_path / "single.safetensors"), exact=False)


def test_warmup_stable_decay():
    c = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1, decay_steps=20)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(10, c) == lr_at(79, c) == 1.0
    assert lr_at(80, c) < 1.0 and lr_at(99, c) == pytest.approx(0.1)
    assert all(lr_at(i, c) > lr_at(i + 1, c) for i in range(79, 99))
    longer = TrainConfig(steps=1000, lr=1.0, warmup_steps=10, min_lr_ratio=0.1, decay_steps=200)
    assert all(lr_at(i, c) == lr_at(i, longer) for i in range(80))  # the stable phase is the same in both


def test_stable_checkpoint_of_a_longer_run_continues_into_a_shorter_schedule(tmp_path):
    """Warmup-stable-decay: train 10 steps (decay over the last 2) from scratch, or take step 8 of a 100-step
    run's stable phase and continue with the 10-step schedule: identical weights (how the built-in teacher's
    recipe can be extended without retraining the stable phase)."""
    def trainer(steps, decay, ckpt):
        torch.manual_seed(0)
        data = torch.randint(0, 64, (4000,), generator=torch.Generator().manual_seed(1))
        cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-2, warmup_steps=2, decay_steps=decay, checkpoint_every=4,
                          seed=0)
        return Trainer(_tiny(), lambda m, b: (ce_loss(m(**{k: b[k] for k in ("input_ids",)}).logits, b["labels"], True), {}),
                       BlockStream(data, 16, 4, seed=0), cfg, ckpt, quiet=True)

    direct = trainer(10, 2, None)
    direct.train()
    long_run = trainer(100, 20, tmp_path / "ck")
    for _ in range(8):
        long_run.train_step()
    long_run.save_checkpoint()
    cont = trainer(10, 2, tmp_path / "ck")
    assert cont.resume() and cont.step == 8
    cont.train()
    _same(direct.model.state_dict(), cont.model.state_dict())


@pytest.mark.parametrize("fused_linear", [None, False])
def test_default_kd_loss_trains_under_bf16_autocast(fused_linear):
    """bf16 autocast on CPU with edgekd's KD loss: the default (hidden states through both heads) and the
    full-logits path take the same first step (the same loss within bf16 rounding) and train finite weights."""
    from edgekd.distill.objective import DistillObjective, build_response_loss
    from edgekd.distill.schemes import build_scheme

    teacher, model = _tiny(seed=3).requires_grad_(False).eval(), _tiny(seed=0)
    spec = None if fused_linear is None else [{"name": "kd", "fused_linear": False}]
    loss_fn = build_response_loss(spec, model.config, teacher.config, temperature=1.0, alpha=0.7)
    assert loss_fn.needs_last_hidden == (fused_linear is None)
    scheme = build_scheme("offline", teachers=[teacher], student=model)
    scheme.use_loss(loss_fn)
    stream = BlockStream(torch.arange(2000) % 64, 16, 4, seed=1)
    tc = TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=1, bf16=True)
    hist = Trainer(model, DistillObjective(loss_fn, scheme, causal=True), stream, tc, None, quiet=True).train()
    assert len(hist) == 3 and all(math.isfinite(h["loss"]) for h in hist)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        b = stream.batch_at(0)
        s, t = _tiny(seed=0)(input_ids=b["input_ids"]).logits, teacher(input_ids=b["input_ids"]).logits
        from edgekd.kernels import kd_loss_reference

        want = float(kd_loss_reference(s[:, :-1].float(), t[:, :-1].float(), b["labels"][:, 1:], alpha=0.7))
    assert hist[0]["loss"] == pytest.approx(want, rel=2e-2)
