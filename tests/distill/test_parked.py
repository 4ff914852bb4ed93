"""Parked models: a trained model's weights wait on disk while the run trains the next, and come back
exactly (tied weights still tied), and the run trains its baselines with the student parked."""

import importlib

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from edgekd.distill import run
from edgekd.distill.memory import Parked

from .test_run import _cfg

run_mod = importlib.import_module("edgekd.distill.run")  # the package's `run` is the function


def _tied_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_parked_model_releases_its_weights_and_restores_them_exactly(tmp_path):
    model = _tied_llama()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
    params = dict(model.named_parameters())
    n = sum(p.numel() for p in params.values())
    parked = Parked(model, tmp_path / "parked", "student")
    assert parked.path.is_file() and parked.path.stat().st_size >= 4 * n
    assert sum(p.numel() for p in model.parameters()) == 0
    assert parked.restore() is model
    assert all(model.get_parameter(k) is p for k, p in params.items())  # the same Parameter objects
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    assert not (tmp_path / "parked").exists()


def test_run_trains_the_baselines_with_the_student_parked(teacher_dir, text_dir, tmp_path, monkeypatch):
    """While each baseline trains, the student (and the baseline before it) are on disk, not in memory; the
    report evaluates them restored: ce_only at alpha 0 is still the student."""
    seen = {}
    real = run_mod.train_baseline

    def spy(ctx, name):
        seen[name] = sorted(p.name for p in (ctx.out / "checkpoints" / "parked").glob("*.safetensors"))
        return real(ctx, name)

    monkeypatch.setattr(run_mod, "train_baseline", spy)
    out = tmp_path / "run"
    rep = run(_cfg(teacher_dir, text_dir, out, alpha=0.0, checkpoint_every=None)).report
    assert seen == {"scratch": ["stage1.safetensors"], "ce_only": ["scratch.safetensors", "stage1.safetensors"]}
    assert not (out / "checkpoints" / "parked").exists()
    assert abs(rep["ce_only"]["eval_loss"] - rep["student"]["eval_loss"]) < 2e-3
