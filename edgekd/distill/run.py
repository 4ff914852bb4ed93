"""One distillation run: load → for each stage of the scheme's plan: train → the baselines → evaluate →
report. The run directory's layout is DESIGN.md's; `run()` returns a RunResult for whoever called it."""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from edgekd.distill.config import (DEFAULT_STEPS, DistillConfig, parse_loss_spec, read_saved_json,
                                   refuse_changed_inputs, resolve_out, resume_config, validate)
from edgekd.errors import EdgekdError
from edgekd.io import atomic_dir, run_lock, write_json
from edgekd.models.loading import CAUSAL_LM, CLASSIFIER, SEQ2SEQ
from edgekd.settings import Settings

__all__ = ["DistillConfig", "RunContext", "RunResult", "Trained", "apply_settings", "run", "resolve_out",
           "DEFAULT_STEPS"]


@dataclass
class RunResult:
    """What a run produced: its directory, the report it wrote, and what its caller needs next."""

    out: Path                               # the run directory (absolute)
    report: dict                            # report.json as written
    kind: str                               # CAUSAL_LM | CLASSIFIER
    heldout_ids: Optional[torch.Tensor]     # held-out token rows [n, seq_len] (causal LMs), for export parity
    histories: dict = field(default_factory=dict)
    temperature_examples: list = field(default_factory=list)
    heldout_pairs: list = field(default_factory=list)   # seq2seq: held-out (source, reference), for export parity
    teacher_top1: Optional[torch.Tensor] = None          # the teacher's argmax at each position of heldout_ids
    #                                                      ([n, seq_len - 1], int32: row i predicts token i + 1), for
    #                                                      the exported files' top-1 agreement after the teacher is gone
    quant_aware: dict = field(default_factory=dict)      # recipe key ("litert-lm-int4") -> its QAD student's directory


@dataclass
class RunContext:
    """Everything loaded once and shared by the stages, the baselines and the report."""

    cfg: DistillConfig
    out: Path
    teacher: Any
    tokenizer: Any
    kind: str
    data: Any                               # edgekd.distill.data.RunData
    student_config: Any
    steps: int
    device: torch.device
    rank: int
    world: int
    temperature: float
    loss_spec: Optional[list]
    init_batches: list
    resolved: dict                          # config.json
    timer: Any
    started: float = field(default_factory=time.time)
    cross: Any = None                       # data.alignment.CrossTokenizer: the teacher has another tokenizer
    teacher_tokenizer: Any = None           # the teacher's own (ctx.tokenizer is the student's and the data's)
    micro_batch: Optional[int] = None       # rows per forward in training, None: whole batches (check_run_size)
    checkpointing: bool = False             # students train with gradient checkpointing (check_run_size)

    def new_student(self, teacher, config, calibration, init: str, seed: int):
        """(model, init_info): a student of `config`; from the teacher's weights where they fit, or, when the
        teacher has another tokenizer, from the student directory's own weights (else random)."""
        from edgekd.models.students import build_student

        if self.cross is None:
            return build_student(teacher, config, calibration, init=init, seed=seed)
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        src = self.cfg.student
        if init != "random" and any((Path(src) / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
            return AutoModelForCausalLM.from_pretrained(src), {"method": "pretrained", "from": str(src)}
        return AutoModelForCausalLM.from_config(config), {"method": "random", "why": "the teacher has another tokenizer"}

    @property
    def causal(self) -> bool:
        return self.kind == CAUSAL_LM

    def train_config(self, steps: int):
        from edgekd.distill.trainer import TrainConfig

        c = self.cfg
        return TrainConfig(steps=steps, batch_size=c.batch_size, micro_batch_size=self.micro_batch, lr=c.lr,
                           warmup_steps=c.warmup_steps if c.warmup_steps is not None else max(1, steps // 10),
                           checkpoint_every=c.checkpoint_every or max(1, steps // 4), seed=c.seed, bf16=c.bf16,
                           gradient_checkpointing=self.checkpointing,
                           keep_checkpoints=c.keep_checkpoints,
                           eval_every=c.eval_every if c.eval_every is not None else max(1, steps // 10))

    def heldout_loss(self, model) -> float:
        """A point of a model's held-out loss curve: the same batches the report evaluates on."""
        from edgekd.distill.evaluate import heldout_loss

        return heldout_loss(model, self.data.eval_batches, self.kind, self.device)


@dataclass
class Trained:
    """A model a stage (or a baseline) trained, with its trainer (history, steps) and how it was initialised."""

    model: Any
    trainer: Any
    init_info: dict


def apply_settings(settings: Settings) -> Settings:
    """Hand the switches consulted where no caller can pass Settings to the modules that hold them: the
    kernels' reference switch (EDGEKD_KERNEL) and the fault hook (EDGEKD_FAULT). Called once by each edge
    (the CLI, `run` and the job for Python callers); returns `settings`."""
    from edgekd import faults, kernels

    kernels.force_reference(settings.kernel == "reference")
    faults.arm(settings.fault)
    return settings


def run(config: DistillConfig | dict, *, status: str = "complete", settings: Optional[Settings] = None) -> RunResult:
    """Run a distillation and return its result (the run is complete only when this returns).

    `status` is what report.json says when this returns: the one-command job passes "incomplete",
    since its export and profile phases come after. Holds RUN/.lock throughout. `settings`: the
    caller's (the CLI's, the job's); default: the environment now.
    """
    cfg = DistillConfig.from_dict(config) if isinstance(config, dict) else config
    settings = apply_settings(settings or Settings.from_env())
    out = resolve_out(cfg)
    # under torchrun the processes share the run directory: rank 0 holds its lock for all of them
    with run_lock(out) if settings.rank == 0 else nullcontext():
        if cfg.resume:
            cfg = resume_config(cfg, out)
        elif (out / "config.json").exists():
            raise EdgekdError(f"run directory {out} already holds a run: pass --resume to continue it or another --out")
        validate(cfg, settings.world_size)
        return _run(cfg, out, status, settings)


def check_run_size(cfg: DistillConfig, teacher, s_cfg, kind: str, device, world: int) -> tuple[Optional[int], bool]:
    """--seq-len within the teacher's window (the default capped, and said), then the run's memory estimate
    (edgekd.distill.memory) against what the device has free, the teacher loaded. Returns the micro-batch the
    run trains with (--micro-batch-size, else the largest whose activations fit memory.FORWARD_BYTES) and
    whether its students train with gradient checkpointing (memory.needs_checkpointing)."""
    from edgekd.distill.memory import check_fits, check_seq_len, micro_batch, needs_checkpointing, training_bytes
    from edgekd.models.arch import param_count

    window = getattr(teacher.config, "max_position_embeddings", None)
    seq = check_seq_len(cfg.seq_len, DistillConfig().seq_len, window if kind != SEQ2SEQ else None, cfg.teacher)
    outputs = getattr(teacher.config, "num_labels", 2) if kind == CLASSIFIER else getattr(teacher.config, "vocab_size", 0)
    per_token = kind != CLASSIFIER
    checkpointed = needs_checkpointing(cfg.gradient_checkpointing, s_cfg, seq, per_token)
    share = -(-cfg.batch_size // world)
    batch = cfg.micro_batch_size or micro_batch(share, seq, s_cfg, outputs, per_token)
    t_params = param_count(teacher.config)
    t_bytes = next(teacher.parameters()).element_size()  # 2 where the frozen teacher is held in bf16
    parts = training_bytes(t_params, param_count(s_cfg), s_cfg, batch, seq, outputs, per_token=per_token,
                           teacher_bytes=t_bytes, checkpointed=checkpointed)
    check_fits(parts, device, batch, seq, already_loaded=parts["teacher"])  # the teacher is loaded (on `device`)
    if batch < share:  # the teacher still reads whole batches (the student's initialisation): that pass must fit too
        whole = training_bytes(t_params, 0, teacher.config, share, seq, outputs, per_token=per_token,
                               teacher_bytes=t_bytes)
        check_fits(whole, device, share, seq, already_loaded=whole["teacher"])
    return (batch if cfg.micro_batch_size or batch < share else None), checkpointed


def _run(cfg: DistillConfig, out: Path, status: str, settings: Settings) -> RunResult:
    from edgekd.distill.quant_aware import train_quant_aware
    from edgekd.distill.schemes import scheme_class

    ctx = load_run(cfg, out, settings)
    if cfg.resume:
        refuse_changed_inputs(read_saved_json(out / "config.json"), ctx.resolved)
    plan = scheme_class(cfg.scheme).plan(ctx)
    ctx.resolved.update(plan.record)
    if ctx.rank == 0 and not cfg.resume:
        write_json(out / "config.json", ctx.resolved)
    with ctx.timer("distill"):
        trained: list[Trained] = []
        for stage in plan.stages:
            trained.append(train_stage(ctx, stage, trained[-1].model if trained else None))
    if ctx.rank == 0:
        save_model(trained[-1].model, ctx.tokenizer, out / "student")
    # Each trained model waits on disk while the next trains: memory holds the teacher and one model in training.
    parked = _park({f"stage{i + 1}": t.model for i, t in enumerate(trained)}, ctx)
    float_copy = parked[-1].copy if parked else (lambda: copy.deepcopy(trained[-1].model))
    qad = {}
    for key, fmt, quant in _qad_recipes(cfg):
        with ctx.timer(f"qad-{key}"):
            qad[key] = train_quant_aware(ctx, float_copy(), fmt, quant)
        if ctx.rank == 0:
            save_model(qad[key].model, ctx.tokenizer, out / "qad" / key)
        parked += _park({f"qad-{key}": qad[key].model}, ctx)
    baselines = {}
    for name in (n for n in BASELINES if n in cfg.baselines):
        baselines[name] = train_baseline(ctx, name)
        parked += _park({name: baselines[name].model}, ctx)
    if ctx.world > 1:
        import torch.distributed as dist

        dist.barrier()
    if ctx.rank != 0:
        return RunResult(out, {}, ctx.kind, ctx.data.heldout_ids)
    for p in parked:
        p.restore()
    return report_run(ctx, plan, trained, baselines, status, qad)


def _qad_recipes(cfg: DistillConfig) -> list[tuple[str, str, str]]:
    """(key, format, quantize) of each recipe the run distils its student into (--quant-aware)."""
    from edgekd.distill.quant_aware import qad_key, recipe_keys

    return [(qad_key(f, q), f, q) for f, q in recipe_keys(cfg.quant_aware)]


def _park(models: dict, ctx: RunContext) -> list:
    """`models` written to RUN/checkpoints/parked and released until the report (one process only: a
    distributed run's ranks share the models' storage through their process group)."""
    from edgekd.distill.memory import Parked

    if ctx.world > 1:
        return []
    return [Parked(m, ctx.out / "checkpoints" / "parked", name) for name, m in models.items()]


def load_run(cfg: DistillConfig, out: Path, settings: Settings) -> RunContext:
    """Teacher, tokenizer, data and the student's config; the resolved config (not yet written)."""
    from edgekd import console
    from edgekd.data.labels import teacher_classes
    from edgekd.data.tokenizer import check_fits_embedding
    from edgekd.distill.data import RunData
    from edgekd.distill.quant_aware import check_config as check_quant_aware
    from edgekd.distill.schemes import freeze
    from edgekd.distill.trainer import autocast_bf16
    from edgekd.hyperparams import resolve_temperature
    from edgekd.models.arch import param_count
    from edgekd.models.loading import load_model, model_digest, resolve_model_dir
    from edgekd.models.students import student_config_from
    from edgekd.timing import PhaseTimer

    rank, world = _init_distributed(settings)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.torch_device or ("cuda" if torch.cuda.is_available() else "cpu"))
    timer = PhaseTimer(out / "checkpoints" / "timings.json", resume=cfg.resume)
    teacher, tokenizer, kind = load_model(cfg.teacher)
    check_quant_aware(cfg.quant_aware, cfg.qad_steps, kind)
    check_fits_embedding(tokenizer, teacher)
    freeze(teacher.to(device))
    teacher_tokenizer, cross = tokenizer, None
    if _needs_alignment(cfg.loss):
        tokenizer, s_cfg, cross = _cross_tokenizer_student(cfg, teacher, tokenizer, kind)
    else:
        s_cfg = student_config_from(cfg.student, teacher.config)
        _check_student_tokenizer(cfg.student, tokenizer)
    if kind == CAUSAL_LM and getattr(s_cfg, "eos_token_id", None) is None \
            and getattr(tokenizer, "eos_token_id", None) is not None:
        # A config naming no end token (random-weight stand-ins, some conversions): the runtimes stop on the
        # tokenizer's, and LiteRT-LM opens no bundle without a stop token (export.generative_export.check_stop_token)
        s_cfg.eos_token_id = tokenizer.eos_token_id
    if kind == SEQ2SEQ and cfg.scheme != "offline":
        raise EdgekdError(f"scheme {cfg.scheme!r} does not distil encoder-decoder teachers yet: use --scheme offline "
                          f"(word-level KD on the decoder)")
    if autocast_bf16(cfg.bf16, device, param_count(s_cfg)):
        # Frozen, the teacher needs no float32 master copy: its weights in bf16 (half the bytes), as the students'
        # autocast computes with them; the students start from (and evaluate beside) these weights.
        teacher.to(torch.bfloat16)
    micro, checkpointing = check_run_size(cfg, teacher, s_cfg, kind, device, world)  # before the first batch
    data = RunData(cfg, tokenizer, kind, rank, world, getattr(teacher.config, "max_position_embeddings", None),
                   getattr(teacher.config, "decoder_start_token_id", None),
                   teacher_classes(teacher.config) if kind == CLASSIFIER else None)
    torch.manual_seed(cfg.seed)
    init_stream = data.stream(0, cfg.seed + 7919)
    init_batches = [init_stream.next() for _ in range(cfg.init_batches)]
    t_params, s_params = param_count(teacher.config), param_count(s_cfg)
    temperature = resolve_temperature(cfg.temperature, lambda: (t_params, s_params))
    steps = cfg.steps or DEFAULT_STEPS
    ctx = RunContext(cfg, out, teacher, tokenizer, kind, data, s_cfg, steps, device, rank, world, temperature,
                     parse_loss_spec(cfg.loss), init_batches, {}, timer, cross=cross,
                     teacher_tokenizer=teacher_tokenizer, micro_batch=micro, checkpointing=checkpointing)
    ctx.resolved = asdict(cfg) | {
        "out": str(out), "steps": steps, "temperature": temperature, "temperature_requested": cfg.temperature,
        "loss": ctx.loss_spec, "kind": kind, "seq_len": data.seq_len, "world_size": world,
        "student_config": s_cfg.to_dict(), "train": asdict(ctx.train_config(steps)), "data_hash": data.digest,
        "teacher_hash": model_digest(resolve_model_dir(cfg.teacher)),
        "teacher_params": t_params, "student_params": s_params, "resume": False,
        "teacher_dtype": str(next(teacher.parameters()).dtype).removeprefix("torch.")}
    if cross is not None:
        ctx.resolved["cross_tokenizer"] = {"teacher_vocab": len(teacher_tokenizer), "student_vocab": len(tokenizer),
                                           "shared_tokens": int((cross.vocab_map >= 0).sum())}
    if rank == 0:
        console.log_into(out / "edgekd.log")
        timer.save()
    return ctx


def _student_tokenizer(student):
    """The tokenizer of a student given as a model directory, None when it has none."""
    if isinstance(student, str) and Path(student).is_dir() and \
            any((Path(student) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        from edgekd.data.tokenizer import load_tokenizer

        return load_tokenizer(student)
    return None


def _check_student_tokenizer(student, tokenizer) -> None:
    """A student given as a model directory with its own tokenizer must share the teacher's token map
    (or the run uses a cross-tokenizer loss)."""
    from edgekd.models.students import check_tokenizers_agree

    try:
        check_tokenizers_agree(tokenizer, _student_tokenizer(student))
    except EdgekdError as e:
        raise EdgekdError(f"{e}, or distil across tokenizers with --loss uld or --loss token_align") from None


def _needs_alignment(loss) -> bool:
    from edgekd.checks import loss_names
    from edgekd.losses import aligns_tokenizers

    return aligns_tokenizers(loss_names(loss))


def _cross_tokenizer_student(cfg: DistillConfig, teacher, teacher_tokenizer, kind: str):
    """(the data's tokenizer, the student config, the CrossTokenizer) of a run whose loss aligns two
    tokenizers: the student is a model directory with its own tokenizer (its config and, if it has them,
    its weights), and the run's data are in its tokens."""
    from transformers import AutoConfig

    from edgekd.data.alignment import CrossTokenizer

    tok = _student_tokenizer(cfg.student)
    if kind != CAUSAL_LM or tok is None:
        raise EdgekdError("a cross-tokenizer loss ('uld', 'token_align') distils a causal LM into a student with its "
                          "own tokenizer: give --student a model directory holding its config and tokenizer")
    if cfg.scheme != "offline" or (cfg.scheme_config or {}).get("cache"):
        raise EdgekdError("a cross-tokenizer loss runs with the offline scheme and a live teacher (no teacher cache)")
    s_cfg = AutoConfig.from_pretrained(cfg.student)
    return tok, s_cfg, CrossTokenizer(tok, teacher_tokenizer, getattr(teacher.config, "max_position_embeddings", None))


def train_stage(ctx: RunContext, stage, previous) -> Trained:
    """Build the stage's student from its teacher, its scheme object and loss, and train it."""
    from edgekd.distill.objective import DistillObjective, build_response_loss
    from edgekd.distill.schemes import build_scheme, freeze
    from edgekd.distill.trainer import Trainer
    from edgekd.models.students import count_params

    cfg = ctx.cfg
    teachers = stage.teachers if stage.teachers is not None else [freeze(previous)]
    model, init_info = ctx.new_student(teachers[0], stage.student_config, ctx.init_batches, cfg.student_init,
                                       cfg.seed)
    model.to(ctx.device)
    scheme = build_scheme(cfg.scheme, teachers=teachers, student=model, **stage.options)
    loss_fn = build_response_loss(ctx.loss_spec, stage.student_config, scheme.teacher_config or teachers[0].config,
                                  temperature=ctx.temperature, alpha=cfg.alpha, impl=cfg.loss_impl, causal=ctx.causal,
                                  student_params=count_params(model), teacher_params=count_params(teachers[0]))
    loss_fn.to(ctx.device)
    scheme.use_loss(loss_fn)
    if ctx.cross is not None:
        scheme.use_tokens(ctx.cross)
    trainer = Trainer(model, DistillObjective(loss_fn, scheme, ctx.causal), stage.stream,
                      ctx.train_config(stage.steps), ctx.out / "checkpoints" / stage.checkpoint, kind=ctx.kind,
                      extra_params=list(loss_fn.parameters()) + list(scheme.extra_parameters()), scheme=scheme,
                      label=stage.label, quiet=cfg.quiet, device=ctx.device, evaluator=ctx.heldout_loss,
                      parallel=cfg.parallel)
    if cfg.resume:
        trainer.resume()
    trainer.train()
    trainer.release_optimizer()
    return Trained(trainer.unsharded_model(), trainer, init_info)


# The baselines every run trains beside its student: the same architecture, data, steps and schedule on
# hard labels alone. `scratch` starts from random weights; `ce_only` from the student's own initialisation
# (init None: the run's student_init and seed, from the teacher, so the same starting weights as a
# one-stage student), which isolates what the soft targets bought from what the teacher's weights did.
BASELINES = {"scratch": {"init": "random", "seed_offset": 1}, "ce_only": {"init": None, "seed_offset": 0}}


def train_baseline(ctx: RunContext, name: str) -> Trained:
    """A baseline distillation has to beat: the run's student architecture trained on hard labels alone."""
    from edgekd.distill.objective import hard_label_objective
    from edgekd.distill.trainer import Trainer

    spec = BASELINES[name]
    own = spec["init"] is None
    with ctx.timer(name):
        model, info = ctx.new_student(ctx.teacher, ctx.student_config, ctx.init_batches if own else None,
                                      ctx.cfg.student_init if own else spec["init"], ctx.cfg.seed + spec["seed_offset"])
        model.to(ctx.device)
        trainer = Trainer(model, hard_label_objective(ctx.causal), ctx.data.stream(), ctx.train_config(ctx.steps),
                          ctx.out / "checkpoints" / name, kind=ctx.kind, label=name, quiet=ctx.cfg.quiet,
                          device=ctx.device, evaluator=ctx.heldout_loss, parallel=ctx.cfg.parallel)
        if ctx.cfg.resume:
            trainer.resume()
        trainer.train()
        trainer.release_optimizer()
    return Trained(trainer.unsharded_model(), trainer, info)


def report_run(ctx: RunContext, plan, trained: list, baselines: dict, status: str, qad: Optional[dict] = None) -> RunResult:
    """Evaluate every model on the held-out batches and write report.json, report.md and the plots."""
    from edgekd.distill.evaluate import continuations, evaluate, teacher_on_own_tokens, temperature_examples
    from edgekd.distill.schemes import arch_summary
    from edgekd.models.students import count_params, size_mb
    from edgekd.report import build_report, write_run_report

    student = trained[-1].model
    stages = {f"stage{i + 1}": t.model for i, t in enumerate(trained[:-1])}
    named = {"student": student} | {k: b.model for k, b in baselines.items()}
    qad = qad or {}
    models = named | stages | {f"qad:{k}": runtime_numerics(t) for k, t in qad.items()}
    teacher_top1 = [] if ctx.causal else None
    with ctx.timer("eval"):
        if ctx.cross is None:
            evals = evaluate(models, ctx.teacher, ctx.data.eval_batches, ctx.kind, ctx.device, teacher_top1)
        else:  # the teacher reads the same held-out text in its own tokens
            evals = evaluate(models, None, ctx.data.eval_batches, ctx.kind, ctx.device)
            evals["teacher"] = teacher_on_own_tokens(ctx.teacher, ctx.cross, ctx.data.eval_batches, ctx.device)
    temps = temperature_examples(ctx.teacher, ctx.data.example_ids.to(ctx.device), ctx.tokenizer) \
        if ctx.causal and ctx.cross is None else []
    sizes = {name: {"params": count_params(m), "size_mb": size_mb(m)} for name, m in ({"teacher": ctx.teacher} | named).items()}
    histories = {"distilled": _joined_history(trained)} | {k: b.trainer.history for k, b in baselines.items()}
    curves = {"student": _joined_history(trained, "evals")} | {k: b.trainer.evals for k, b in baselines.items()}
    side_by_side = (continuations(({"teacher": ctx.teacher} if ctx.cross is None else {}) | {"student": student} |
                                  ({"ce_only": baselines["ce_only"].model} if "ce_only" in baselines else {}),
                                  ctx.data.heldout_ids, ctx.tokenizer, ctx.device) if ctx.causal else [])
    mistakes = None
    if ctx.data.eval_batches and "pixel_values" in ctx.data.eval_batches[0]:  # an image classifier: what KD missed
        from edgekd.distill.evaluate import teacher_right_student_wrong

        mistakes = teacher_right_student_wrong(ctx.teacher, student, ctx.data.eval_batches, ctx.device)
    translated = []
    if ctx.kind == SEQ2SEQ:  # chrF of greedy translations of held-out sentences, for every model
        from edgekd.distill.evaluate import translations

        with ctx.timer("eval"):
            scores, translated = translations({"teacher": ctx.teacher} | named, ctx.data.heldout_pairs, ctx.tokenizer,
                                              ctx.data.seq_len, ctx.device)
        for name, score in scores.items():
            evals[name]["chrf"] = score
    ctx.timer.add("total", time.time() - ctx.started, 0.0)  # every invocation's, from loading to the report
    timings = {k: v["wall_s"] for k, v in ctx.timer.phases.items()} | {"invocations": ctx.timer.invocations}
    rep = build_report(config=ctx.resolved, evals=evals, sizes=sizes, histories=histories, temperature_examples=temps,
                       init_info=trained[-1].init_info, student_config=ctx.student_config.to_dict(), timings=timings,
                       eval_curves=curves, continuations=side_by_side)
    rep["kind"], rep["status"] = ctx.kind, status
    if translated:
        rep["distillation"]["translations"] = translated
    if mistakes is not None:
        rep["distillation"]["teacher_right_student_wrong"] = mistakes["count"]
    if len(trained) > 1:
        rep["distillation"]["stages"] = [
            {"stage": i + 1, "config": arch_summary(t.model.config), "params": count_params(t.model),
             "steps": t.trainer.cfg.steps, "eval_loss": evals["student" if t.model is student else f"stage{i + 1}"]["eval_loss"],
             "final_train_loss": t.trainer.history[-1]["loss"] if t.trainer.history else None}
            for i, t in enumerate(trained)]
    rep["distillation"].update({k: v for k, v in plan.record.items() if k != "progressive"})
    rep["distillation"]["baselines"] = list(baselines)
    if qad:
        from edgekd.distill.quant_aware import record

        rep["distillation"]["quant_aware"] = record(qad, evals, {k: f"qad/{k}" for k in qad})
    write_run_report(ctx.out, rep, histories, temps, ctx.kind, mistakes=mistakes)
    if not ctx.cfg.quiet and status == "complete":  # inside the job, the job prints the summary
        _print_summary(ctx.out, evals)
    return RunResult(ctx.out, rep, ctx.kind, ctx.data.heldout_ids, histories, temps, ctx.data.heldout_pairs,
                     torch.cat(teacher_top1) if teacher_top1 else None,
                     {k: ctx.out / "qad" / k for k in qad})


def runtime_numerics(t: Trained):
    """A quantisation-aware student (weights on its recipe's grid) run as its file runs: the recipe's quantisers
    back in place (the weights' a fixed point, the matmul inputs quantised as the runtime does): PyTorch fake-quant."""
    from edgekd.quant import quant_aware
    from edgekd.quant.fake_quant import BY_NAME

    return quant_aware(t.model, BY_NAME[t.init_info["recipe_name"]], weights=False)  # snapped: on the grid


def _joined_history(trained: list, what: str = "history") -> list:
    """One history (or held-out curve, what="evals") over all stages: steps continue across stages, each
    record says its stage."""
    if len(trained) == 1:
        return getattr(trained[0].trainer, what)
    history, offset = [], 0
    for i, t in enumerate(trained):
        history += [{**h, "step": h["step"] + offset, "stage": i + 1} for h in getattr(t.trainer, what)]
        offset += t.trainer.cfg.steps
    return history


def _print_summary(out: Path, evals: dict) -> None:
    from edgekd.console import echo

    s = evals["student"]
    line = f"held-out loss: teacher {evals['teacher']['eval_loss']:.4f}, distilled {s['eval_loss']:.4f}"
    for name in BASELINES:
        if name in evals:
            line += f", {name} {evals[name]['eval_loss']:.4f}"
    echo(line)
    if "chrf" in s:
        echo("held-out chrF: " + ", ".join(f"{'distilled' if n == 'student' else n} {e['chrf']:.1f}"
                                           for n, e in evals.items() if "chrf" in e))
    echo(f"run written to {out} (report.md, report.json, student/)")


def save_model(model, tokenizer, path: Path) -> None:
    """A model (and its tokenizer) in Hugging Face format, written atomically and readable by everyone."""
    from edgekd.models.builtin import make_readable

    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        make_readable(Path(tmp))


def _init_distributed(settings: Settings):
    """Under torchrun (Settings.world_size > 1) join the group (gloo on CPU, nccl on GPU)."""
    import torch.distributed as dist

    if settings.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(settings.local_rank)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
