"""Quantisation-aware distillation (QAD): after float distillation, the student is distilled again into the
numbers its exported file will hold.

For each runtime recipe the run ships (`DistillConfig.quant_aware`, "FORMAT:QUANTIZE" such as
"litert-lm:int4"), a copy of the float student goes through that runtime's weight quantiser in every
forward pass (edgekd.quant: the builder's own recipe, straight-through gradients, onnxruntime's run-time
activation quantisation where it is reproduced) and is trained for `qad_steps` more steps on the float
teacher's soft targets, with the run's loss, at a tenth of the run's learning rate. It is then saved with
its weights on the runtime's grid (snap_model) in RUN/qad/KEY: the runtime's quantiser gives those
weights back unchanged, so the exported file and the PyTorch model the report evaluates are one model.
"""

from __future__ import annotations

from typing import Optional

from edgekd.errors import EdgekdError

QAD_LR_SCALE = 0.1       # QAD's learning rate against the run's: it fine-tunes a trained student
QAD_STEP_SHARE = 3       # default QAD steps: the run's steps / 3 per recipe


def recipe_keys(quant_aware) -> list[tuple[str, str]]:
    """(format, quantize) of each "FORMAT:QUANTIZE" item, checked: an unknown format, a float precision or a
    recipe the runtime lacks is one line naming what exists."""
    from edgekd.quant.fake_quant import RECIPES

    known = ", ".join(f"{f}:{q}" for f, q in RECIPES if q != "int4b32")
    items = [quant_aware] if isinstance(quant_aware, str) else list(quant_aware or [])
    out = []
    for item in items:
        fmt, _, quant = str(item).partition(":")
        if (fmt, quant) not in RECIPES or quant == "int4b32":
            what = "is float: there is nothing to quantise" if quant in ("none", "float32", "fp32") else \
                "is not a runtime's quantisation recipe"
            raise EdgekdError(f"quant_aware {item!r} {what}: known recipes are {known}")
        out.append((fmt, quant))
    return list(dict.fromkeys(out))


def qad_key(fmt: str, quant: str) -> str:
    """RUN/qad/KEY and report.json's key of a recipe: the export's key ("litert-lm-int4")."""
    from edgekd.precision import precision_of

    return f"{fmt}-{precision_of(quant)}"


def qad_steps(cfg, steps: int) -> int:
    """The QAD steps of each recipe: --qad-steps, else the run's steps / QAD_STEP_SHARE (at least 1)."""
    return int(cfg.qad_steps) if cfg.qad_steps is not None else max(1, steps // QAD_STEP_SHARE)


def train_quant_aware(ctx, model, fmt: str, quant: str):
    """MODEL (a copy of the trained float student, changed in place) distilled through `fmt`'s `quant` recipe,
    then snapped onto its grid; a distill.run.Trained (its trainer's curve starts at the fake-quantised float
    student: PTQ in PyTorch)."""
    from edgekd.distill.objective import DistillObjective, build_response_loss
    from edgekd.distill.run import Trained
    from edgekd.distill.schemes import build_scheme
    from edgekd.distill.trainer import Trainer
    from edgekd.models.students import count_params
    from edgekd.quant import quant_aware, recipe_for_export, snap_model

    cfg = ctx.cfg
    recipe = recipe_for_export(fmt, quant, model.config)
    model = quant_aware(model, recipe)
    model.requires_grad_(True)
    model.train()
    scheme = build_scheme("offline", teachers=[ctx.teacher], student=model)
    loss_fn = build_response_loss(ctx.loss_spec, model.config, ctx.teacher.config, temperature=ctx.temperature,
                                  alpha=cfg.alpha, impl=cfg.loss_impl, causal=ctx.causal,
                                  student_params=count_params(model), teacher_params=count_params(ctx.teacher))
    loss_fn.to(ctx.device)
    scheme.use_loss(loss_fn)
    if ctx.cross is not None:
        scheme.use_tokens(ctx.cross)
    steps = qad_steps(cfg, ctx.steps)
    train = ctx.train_config(steps)
    train.lr, train.warmup_steps, train.eval_every = cfg.lr * QAD_LR_SCALE, max(1, steps // 10), steps
    key = qad_key(fmt, quant)
    trainer = Trainer(model, DistillObjective(loss_fn, scheme, ctx.causal), ctx.data.stream(ctx.steps),
                      train, ctx.out / "checkpoints" / f"qad-{key}", kind=ctx.kind, label=f"QAD {fmt} {quant}",
                      quiet=cfg.quiet, device=ctx.device, evaluator=ctx.heldout_loss, parallel=cfg.parallel)
    if cfg.resume:
        trainer.resume()
    trainer.train()
    trainer.release_optimizer()
    info = {"format": fmt, "quantize": quant, "recipe": recipe.describe(), "recipe_name": recipe.name,
            "steps": steps, "lr": train.lr, "from": "the float-distilled student"}
    return Trained(snap_model(trainer.unsharded_model()), trainer, info)


def record(trained: dict, evals: dict, dirs: dict) -> dict:
    """report.json's `distillation.quant_aware` from the engine, `by_export`: per recipe key, how it was trained and its
    PyTorch held-out numbers (the snapped model, which is what the file holds), with the curve's first point
    (the float student fake-quantised before QAD: PTQ in PyTorch)."""
    out = {}
    for key, t in trained.items():
        curve = t.trainer.evals
        e = evals.get(f"qad:{key}", {})
        out[key] = t.init_info | {"model_dir": dirs[key],
                                  "pytorch": {k: e.get(k) for k in ("eval_loss", "perplexity", "top1_agreement")},
                                  "pytorch_before_qad": curve[0]["eval_loss"] if curve else None}
    return {"by_export": out}


def check_config(quant_aware, qad_steps_given: Optional[int], kind: str) -> None:
    """The engine's QAD options against the run: recipes known, steps positive, a causal-LM teacher."""
    from edgekd.checks import number
    from edgekd.models.loading import CAUSAL_LM

    keys = recipe_keys(quant_aware)
    if qad_steps_given is not None:
        number("--qad-steps", qad_steps_given, low=1, integer=True)
    if keys and kind is not None and kind != CAUSAL_LM:
        raise EdgekdError(f"quantisation-aware distillation ({', '.join(f'{f}:{q}' for f, q in keys)}) is for causal "
                          f"LMs' generative exports; this teacher is a {kind}: drop it")


__all__ = ["QAD_LR_SCALE", "QAD_STEP_SHARE", "check_config", "qad_key", "qad_steps", "recipe_keys", "record",
           "train_quant_aware"]
