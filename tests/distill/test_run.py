"""End to end on a tiny teacher: the run directory, the report keys, resume, and the CLI's errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgekd.distill import DistillConfig, run
from edgekd.errors import EdgekdError
from edgekd.settings import Settings

ROOT = Path(__file__).parents[2]
REPORT_KEYS = {"target", "latency_budget_ms", "teacher", "student", "scratch", "latency", "exports"}


def _cfg(teacher_dir, text_dir, out, **kw):
    base = dict(teacher=str(teacher_dir), data=str(text_dir), out=str(out), steps=6, seq_len=32, batch_size=4,
                eval_blocks=6, checkpoint_every=2, quiet=True, threads=1)
    base.update(kw)
    return DistillConfig(**base)


@pytest.fixture(scope="module")
def tiny_run(teacher_dir, text_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    return run(_cfg(teacher_dir, text_dir, out, temperature="auto")).out


def test_run_directory_and_report(tiny_run):
    out = tiny_run
    for f in ("config.json", "report.json", "report.md", "plots/loss_curves.png", "plots/temperature.png",
              "student/config.json", "student/model.safetensors", "student/tokenizer.json"):
        assert (out / f).is_file(), f
    assert any((out / "checkpoints" / "distill").glob("step_*"))
    rep = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= rep.keys()
    for who in ("teacher", "student", "scratch"):
        for k in ("params", "eval_loss"):
            assert isinstance(rep[who][k], (int, float)) and rep[who][k] > 0, (who, k)
    assert rep["teacher"]["top1_agreement"] == 1.0 and 0 <= rep["student"]["top1_agreement"] <= 1
    assert rep["student"]["params"] == rep["scratch"]["params"] < rep["teacher"]["params"]
    assert rep["target"] is None and rep["latency_budget_ms"] is None  # the job's: the engine has no target
    cfg = json.loads((out / "config.json").read_text())
    # auto temperature: log2(teacher/student params) + 1
    import math

    assert cfg["temperature"] == pytest.approx(math.log2(rep["teacher"]["params"] / rep["student"]["params"]) + 1)
    md = (out / "report.md").read_text()
    assert "scratch baseline" in md and f"{rep['student']['eval_loss']:.4f}" in md
    # the student directory loads as a Hugging Face model with its tokenizer
    from edgekd.models.loading import load_model

    m, tok, _ = load_model(out / "student")
    assert m.config.num_hidden_layers == rep["student"]["config"]["num_hidden_layers"] and len(tok) == m.config.vocab_size


def test_interrupted_run_resumes_to_the_same_student(teacher_dir, text_dir, tmp_path, tiny_run, monkeypatch):
    """An exception injected mid-distillation, then resume: the same weights as the uninterrupted run."""
    from edgekd.distill import trainer as trainer_mod

    orig = trainer_mod.Trainer.train_step
    seen = {"n": 0}

    def boom(self):
        seen["n"] += 1
        if self.label == "distill" and self.step == 5:
            raise KeyboardInterrupt("injected")
        return orig(self)

    out = tmp_path / "r"
    cfg = _cfg(teacher_dir, text_dir, out, temperature="auto")
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", boom)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert not (out / "report.json").exists() and not (out / "student").exists()
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", orig)
    run(DistillConfig(out=str(out), resume=True, quiet=True))
    a = load_file(tiny_run / "student" / "model.safetensors")
    b = load_file(out / "student" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_dir_needs_resume(teacher_dir, text_dir, tiny_run):
    with pytest.raises(EdgekdError, match="--resume"):
        run(_cfg(teacher_dir, text_dir, tiny_run))


def test_resume_with_changed_options_names_them(tiny_run):
    """--resume continues the run as configured: a changed option is refused by name, not silently dropped."""
    saved = json.loads((tiny_run / "config.json").read_text())
    with pytest.raises(EdgekdError, match=r"differ: alpha \(given 0.9, the run has 0.7\), lr \(given 0.01, the run has 0.002\)") as e:
        run(DistillConfig(out=str(tiny_run), resume=True, lr=0.01, alpha=0.9))
    assert "steps" not in str(e.value) and saved["steps"] == 6  # an option left at its default is not a change
    res = _cli("distill", "--out", str(tiny_run), "--resume", "--seq-len", "64")
    assert res.returncode == 2 and "seq_len (given 64, the run has 32)" in res.stderr and "Traceback" not in res.stderr


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "edgekd.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


@pytest.mark.parametrize("make_args, match", [
    (lambda t, d, p: ["--teacher", str(p / "nope")], "does not exist"),
    (lambda t, d, p: ["--teacher", str(t), "--data", str(p / "nodata")], "does not exist"),
    (lambda t, d, p: ["--teacher", str(t), "--temperature", "0"], "temperature"),
    (lambda t, d, p: ["--teacher", str(t), "--temperature", "hot"], "temperature"),
    (lambda t, d, p: ["--teacher", str(t), "--alpha", "1.5"], "alpha"),
    (lambda t, d, p: ["--teacher", str(t), "--scheme", "telepathy"], "scheme"),
    (lambda t, d, p: ["--teacher", str(t), "--data", str(d), "--loss", "nonsense"], "loss"),
    (lambda t, d, p: ["--teacher", str(p / "corrupt")], "safetensors"),
    (lambda t, d, p: ["--teacher", str(t), "--data", str(p / "empty.txt")], "empty"),
])
def test_cli_bad_input_exits_2_with_one_line(teacher_dir, text_dir, tmp_path, make_args, match):
    shutil.copytree(teacher_dir, tmp_path / "corrupt")
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"garbage!" * 8)
    (tmp_path / "empty.txt").write_text("\n\n")
    r = _cli("distill", "--quiet", "--steps", "2", "--seq-len", "32", "--out", str(tmp_path / "run"),
             *make_args(teacher_dir, text_dir, tmp_path))
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [l for l in r.stderr.splitlines() if l.startswith("edgekd: error")]
    assert len(lines) == 1 and match in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "report.json").exists()


def test_ce_only_is_the_student_without_soft_targets(teacher_dir, text_dir, tmp_path):
    """ce_only = the same student, start, data, steps and schedule on hard labels alone. So a run with
    alpha = 0 (no distillation term) trains its student into ce_only: the same held-out loss, and a
    report that says distillation bought nothing."""
    rep = run(_cfg(teacher_dir, text_dir, tmp_path / "run", alpha=0.0, checkpoint_every=None)).report
    s, c = rep["student"], rep["ce_only"]
    assert c["params"] == s["params"] and c["eval_loss"] == pytest.approx(s["eval_loss"], abs=2e-3)
    assert c["eval_loss"] != rep["scratch"]["eval_loss"]  # scratch starts elsewhere
    kd = rep["distillation"]["kd_vs_ce_only"]
    assert abs(kd["loss_saved"]) < 2e-3 and kd["perplexity_ratio"] == pytest.approx(1.0, abs=3e-3)
    assert (tmp_path / "run" / "checkpoints" / "ce_only").is_dir()


def test_heldout_curves_and_continuations(tiny_run):
    """Every trained model has a held-out loss curve from step 0 (before training) to its last step, on the
    report's own held-out batches; and report.md shows held-out continuations side by side."""
    rep = json.loads((tiny_run / "report.json").read_text())
    d = rep["distillation"]
    curves = d["eval_curves"]
    assert set(curves) == {"student", "ce_only", "scratch"}
    for name, pts in curves.items():
        steps = [p["step"] for p in pts]
        assert steps[0] == 0 and steps[-1] == rep["distillation"]["steps"] and steps == sorted(set(steps)), name
        assert pts[-1]["eval_loss"] == pytest.approx(rep[name]["eval_loss"], rel=1e-6), name  # the same batches
    # ce_only and the distilled student start from the same weights; scratch does not
    assert curves["student"][0]["eval_loss"] == pytest.approx(curves["ce_only"][0]["eval_loss"], rel=1e-9)
    assert curves["scratch"][0]["eval_loss"] != pytest.approx(curves["student"][0]["eval_loss"], rel=1e-3)
    assert (tiny_run / "plots" / "eval_curves.png").stat().st_size > 1000
    ex = d["continuations"]
    assert len(ex) == 3
    for e in ex:
        assert {"prompt", "reference", "teacher", "student", "ce_only"} <= e.keys()
        assert all(isinstance(e[k], str) and e[k] for k in ("prompt", "teacher", "student", "ce_only"))
    md = (tiny_run / "report.md").read_text()
    assert "## Held-out continuations" in md and "eval_curves.png" in md
    assert md.count("| ce_only | `") == 3


def test_continuations_are_greedy_generate(teacher_dir):
    """The side-by-side text is the model's own greedy continuation (checked against a manual argmax loop)."""
    from edgekd.distill.evaluate import continuations
    from edgekd.models.loading import load_model

    m, tok, _ = load_model(teacher_dir)
    blocks = torch.randint(1, len(tok), (2, 24), generator=torch.Generator().manual_seed(0))
    ex = continuations({"t": m}, blocks, tok, n=1, prompt_len=8, new_tokens=5)
    ids = blocks[:1, :8]
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, m(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert ex[0]["t"] == tok.decode(ids[0, 8:].tolist())
    assert ex[0]["reference"] == tok.decode(blocks[0, 8:13].tolist())


def test_bf16_run_holds_the_frozen_teacher_in_bf16(teacher_dir, text_dir, tmp_path):
    """Where the students train under bf16 autocast (`bf16`, or automatically for large models on CPUs with
    native bf16), the frozen teacher's weights are held in bf16: half its bytes, said in the resolved config,
    counted so by the memory estimate, and the run (initialisation from the teacher, KD through both heads,
    evaluation beside it) still trains float32 students to finite numbers."""
    from edgekd.distill.memory import training_bytes
    from edgekd.distill.run import load_run

    cfg = _cfg(teacher_dir, text_dir, tmp_path / "run", bf16=True, checkpoint_every=None, baselines="ce_only")
    ctx = load_run(cfg, tmp_path / "probe", Settings.from_env({}))
    assert {p.dtype for p in ctx.teacher.parameters()} == {torch.bfloat16}
    assert ctx.resolved["teacher_dtype"] == "bfloat16"
    assert training_bytes(1000, 0, {}, 1, 1, 1, teacher_bytes=2)["teacher"] == 2000
    res = run(cfg)
    conf = json.loads((tmp_path / "run" / "config.json").read_text())
    assert conf["teacher_dtype"] == "bfloat16" and conf["train"]["bf16"] is True
    rep = res.report
    for name in ("teacher", "student", "ce_only"):
        assert torch.isfinite(torch.tensor(rep[name]["eval_loss"])), name
    st = load_file(str(next((tmp_path / "run" / "student").glob("*.safetensors"))))
    assert {t.dtype for t in st.values()} == {torch.float32}
    # float32 by default at this size: the teacher keeps its float32 weights
    assert load_run(_cfg(teacher_dir, text_dir, tmp_path / "r2"), tmp_path / "probe2", Settings.from_env({})).resolved[
        "teacher_dtype"] == "float32"


def test_gradient_checkpointing_trains_the_same_student(teacher_dir, text_dir, tmp_path):
    """Gradient checkpointing rebuilds the activations in the backward pass instead of keeping them: the run
    trains the same student (the same held-out losses), says so in config.json, and the estimate counts
    each layer's input only. Left unset, it is on exactly where one row's activations exceed the forward
    budget (a long sequence of a wide, deep student)."""
    from edgekd.distill.memory import FORWARD_BYTES, needs_checkpointing, training_bytes

    kw = dict(checkpoint_every=None, baselines="none", steps=4)
    plain = run(_cfg(teacher_dir, text_dir, tmp_path / "plain", **kw)).report
    ckpt = run(_cfg(teacher_dir, text_dir, tmp_path / "ckpt", gradient_checkpointing=True, **kw)).report
    assert ckpt["student"]["eval_loss"] == pytest.approx(plain["student"]["eval_loss"], rel=1e-5)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["train"]["gradient_checkpointing"] is True
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["train"]["gradient_checkpointing"] is False

    big = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24}
    full = training_bytes(0, 0, big, 1, 4096, 0)["activations"]
    assert full > FORWARD_BYTES and needs_checkpointing(None, big, 4096)
    assert training_bytes(0, 0, big, 1, 4096, 0, checkpointed=True)["activations"] < full / 4
    assert not needs_checkpointing(None, big, 128) and not needs_checkpointing(False, big, 4096)


def test_student_of_a_teacher_naming_no_end_token_gets_the_tokenizers(teacher_dir, tmp_path):
    """A causal-LM teacher whose config names no eos_token_id (random-weight stand-ins, some conversions): its
    students stop on the tokenizer's end token, so the runtimes can (LiteRT-LM needs one to open a bundle)."""
    from edgekd.distill.run import load_run

    d = tmp_path / "teacher"
    shutil.copytree(teacher_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | {"eos_token_id": None}))
    (d / "generation_config.json").unlink(missing_ok=True)
    ctx = load_run(_cfg(d, "builtin", tmp_path / "run"), tmp_path / "probe", Settings.from_env({}))
    assert ctx.teacher.config.eos_token_id is None
    assert ctx.tokenizer.eos_token_id is not None and ctx.student_config.eos_token_id == ctx.tokenizer.eos_token_id
    from transformers import GenerationConfig  # what the student's saved generation_config.json says

    assert GenerationConfig.from_model_config(ctx.student_config).eos_token_id == ctx.tokenizer.eos_token_id
