"""One distillation run, end to end: load, build the student, distill, train the scratch baseline,
evaluate all three on held-out data and write the run directory (see DESIGN.md)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import torch

from edgekd.errors import EdgekdError
from edgekd.io import atomic_dir, run_lock, write_json

SCHEMES = ("offline", "online", "self", "multi_teacher", "progressive", "sequence")
DEFAULT_STEPS = 300


@dataclass
class DistillConfig:
    """Everything a run depends on; RUN/config.json is this, fully resolved."""

    teacher: str = "builtin"
    data: str = "builtin"
    text_column: Optional[str] = None              # tables (.csv, .parquet, .jsonl, saved data sets); None: text, sentence, ...
    label_column: Optional[str] = None             # None: label or labels, where there is one
    student: Optional[Union[str, dict]] = None
    steps: Optional[int] = None
    out: Optional[str] = None
    resume: bool = False
    temperature: Union[float, str] = 2.0          # or "auto": log2(teacher/student params) + 1
    alpha: float = 0.5
    loss: Optional[Union[str, list]] = None       # JSON list, path to one, or a loss name
    scheme: str = "offline"
    scheme_config: dict = field(default_factory=dict)
    teachers: list = field(default_factory=list)  # extra teachers (multi_teacher)
    seed: int = 0
    target: Optional[str] = None
    latency_budget_ms: Optional[float] = None
    device: str = "local"                          # where the student is profiled (targets engineer)
    compute: Optional[str] = None                  # torch device to train on; None: cuda if present
    batch_size: int = 8
    micro_batch_size: Optional[int] = None
    seq_len: int = 256
    lr: float = 2e-3
    warmup_steps: Optional[int] = None
    checkpoint_every: Optional[int] = None
    eval_blocks: int = 48
    scratch: bool = True
    student_init: str = "teacher"
    calibration_batches: int = 4
    loss_impl: str = "fused"                       # "eager": plain PyTorch loss (benchmarks)
    bf16: Optional[bool] = None
    threads: Optional[int] = None
    export: bool = False                           # export + profile the student into RUN/export, RUN/profile
    quiet: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def parse_loss_spec(loss) -> Optional[list]:
    """--loss: a JSON list, a path to a JSON file, or a bare loss name."""
    if loss is None or isinstance(loss, list):
        return loss
    if isinstance(loss, dict):
        return [loss]
    s = str(loss).strip()
    if s.startswith("[") or s.startswith("{"):
        try:
            v = json.loads(s)
        except json.JSONDecodeError as e:
            raise EdgekdError(f"--loss is not valid JSON ({e.msg}): pass e.g. '[{{\"name\": \"kd\", \"weight\": 1}}]'") from e
        return v if isinstance(v, list) else [v]
    p = Path(s)
    if p.suffix == ".json":
        if not p.is_file():
            raise EdgekdError(f"loss spec file {p} does not exist")
        try:
            v = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise EdgekdError(f"loss spec file {p} is not valid JSON ({e.msg})") from e
        return v if isinstance(v, list) else [v]
    return [{"name": n.strip(), "weight": 1.0} for n in s.split("+")]


def validate(cfg: DistillConfig) -> None:
    """Every option of the run, checked before anything is loaded or written (edgekd.checks)."""
    from edgekd import checks
    from edgekd.models.loading import read_config_dict, resolve_model_dir

    if cfg.scheme not in SCHEMES:
        raise EdgekdError(f"unknown scheme {cfg.scheme!r}: choose one of {', '.join(SCHEMES)}")
    if cfg.loss_impl not in ("fused", "eager"):
        raise EdgekdError(f"unknown loss implementation {cfg.loss_impl!r}: use 'fused' or 'eager'")
    teacher_config = read_config_dict(resolve_model_dir(cfg.teacher)) if cfg.teacher == "builtin" else None
    checks.distill_inputs(asdict(cfg), teacher_config)


def _init_distributed():
    """torchrun sets WORLD_SIZE; join the group (gloo on CPU, nccl on GPU)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Data:
    """The corpus encoded with the teacher's tokenizer: a training stream and held-out batches."""

    def __init__(self, cfg: DistillConfig, tokenizer, kind: str, rank: int, world: int, max_positions: int):
        from edgekd.data.batching import BlockStream, ClassificationStream, eval_blocks
        from edgekd.data.corpus import load_corpus

        corpus = load_corpus(cfg.data, cfg.text_column, cfg.label_column)
        self.digest = corpus.digest
        seq = min(cfg.seq_len, max_positions or cfg.seq_len)
        self.seq_len = seq
        if kind == "classifier":
            if not corpus.is_classification:
                raise EdgekdError(f"the teacher is a classifier but data {cfg.data} has no labels: give JSONL or a data set with a 'label' field")
            mk = lambda pos=0, seed=cfg.seed: ClassificationStream(corpus.train, corpus.train_labels, tokenizer, seq,
                                                                   cfg.batch_size, seed, rank, world, pos)
            self.stream_factory = mk
            vs = ClassificationStream(corpus.validation, corpus.validation_labels, tokenizer, seq, 16, 0)
            n = min(len(corpus.validation), cfg.eval_blocks * 4)
            self.eval_batches = [{"input_ids": vs.ids[i:i + 16], "attention_mask": vs.mask[i:i + 16],
                                  "labels": vs.labels[i:i + 16]} for i in range(0, n, 16)]
            self.val_blocks = vs.ids[:4]
            self.train_tokens = int(vs.mask.sum())
        else:
            from edgekd.data.cache import split_tokens

            train = split_tokens(corpus, "train", tokenizer)
            val = split_tokens(corpus, "validation", tokenizer)
            if any(t.numel() and int(t.max()) >= len(tokenizer) for t in (train, val)):  # none: too little data
                raise EdgekdError("the tokenizer produced ids outside its vocabulary: the teacher's tokenizer is corrupt")
            self.train_tokens = train.numel()
            self.stream_factory = lambda pos=0, seed=cfg.seed: BlockStream(train, seq, cfg.batch_size, seed, rank, world, pos)
            vb = eval_blocks(val, seq, cfg.eval_blocks)
            self.val_blocks = vb
            self.eval_batches = [{"input_ids": vb[i:i + 8], "attention_mask": torch.ones_like(vb[i:i + 8]),
                                  "labels": vb[i:i + 8]} for i in range(0, len(vb), 8)]


def _resolve_out(cfg: DistillConfig) -> Path:
    """Absolute: nothing downstream may depend on the current directory."""
    if cfg.out:
        return Path(cfg.out).expanduser().absolute()
    return Path.cwd() / "runs" / time.strftime("distill-%Y%m%d-%H%M%S")


def _save_student(student, tokenizer, path: Path) -> None:
    with atomic_dir(path) as tmp:
        student.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        from edgekd.models.builtin import _make_readable

        _make_readable(Path(tmp))


def run(config: DistillConfig | dict, *, status: str = "complete") -> Path:
    """Run a distillation job and return its run directory (complete only when this returns).

    `status` is what report.json says when this returns: the one-command job passes "incomplete",
    since its export and profile phases come after. Holds RUN/.lock throughout.
    """
    cfg = DistillConfig.from_dict(config) if isinstance(config, dict) else config
    out = _resolve_out(cfg)
    with run_lock(out):
        return _run(cfg, out, status)


def _run(cfg: DistillConfig, out: Path, status: str) -> Path:
    from edgekd import console
    from edgekd.distill.evaluate import evaluate, temperature_examples
    from edgekd.distill.objective import build_response_loss, ce_loss, scratch_objective
    from edgekd.distill.trainer import Trainer
    from edgekd.models.loading import load_model
    from edgekd.models.students import (build_student, check_tokenizers_agree, count_params, size_mb,
                                        student_config_from)
    from edgekd.data.tokenizer import check_fits_embedding
    from edgekd.report import build_report, write_run_report
    from edgekd.timing import PhaseTimer

    if cfg.resume:
        saved = out / "config.json"
        if not saved.is_file():
            raise EdgekdError(f"nothing to resume in {out} (no config.json): start a run there without --resume")
        try:
            resolved = json.loads(saved.read_text())
        except json.JSONDecodeError as e:
            raise EdgekdError(f"{saved} is corrupt: start a new run with another --out") from e
        keep_quiet = cfg.quiet
        cfg = DistillConfig.from_dict(resolved)
        cfg.resume, cfg.quiet, cfg.out = True, keep_quiet, str(out)
    elif (out / "config.json").exists():
        raise EdgekdError(f"run directory {out} already holds a run: pass --resume to continue it or another --out")
    validate(cfg)
    loss_spec = parse_loss_spec(cfg.loss)
    rank, world = _init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.compute or ("cuda" if torch.cuda.is_available() else "cpu"))
    timer = PhaseTimer(out / "checkpoints" / "timings.json", resume=cfg.resume)
    t_start = time.time()

    teacher, tokenizer, kind = load_model(cfg.teacher)
    check_fits_embedding(tokenizer, teacher)
    teacher.to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    s_cfg = student_config_from(cfg.student, teacher.config)
    if isinstance(cfg.student, str) and Path(cfg.student).is_dir() and \
            any((Path(cfg.student) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        from edgekd.data.tokenizer import load_tokenizer

        check_tokenizers_agree(tokenizer, load_tokenizer(cfg.student))
    data = _Data(cfg, tokenizer, kind, rank, world, getattr(teacher.config, "max_position_embeddings", None))

    torch.manual_seed(cfg.seed)
    calib_stream = data.stream_factory(0, cfg.seed + 7919)
    calib = [calib_stream.next() for _ in range(cfg.calibration_batches)]
    student, init_info = build_student(teacher, s_cfg, calib, init=cfg.student_init, seed=cfg.seed)
    student.to(device)
    t_params, s_params = count_params(teacher), count_params(student)
    temperature = cfg.temperature
    if temperature == "auto":
        temperature = math.log2(max(t_params / s_params, 1.0)) + 1.0
    temperature = float(temperature)
    steps = cfg.steps or DEFAULT_STEPS
    train_cfg = _train_config(cfg, steps)
    scheme_kw, run_opts = _split_scheme_config(cfg)
    train_stream = data.stream_factory()
    sequence_info = None
    if cfg.scheme == "sequence":
        train_stream, sequence_info = _sequence_stream(cfg, run_opts, teacher, tokenizer, kind, data, out, rank, world)
    stage_cfgs = [s_cfg]
    if cfg.scheme == "progressive":
        stage_cfgs = _progressive_configs(run_opts.get("sizes"), teacher, s_cfg)
        if steps < len(stage_cfgs):
            raise EdgekdError(f"scheme 'progressive' has {len(stage_cfgs)} stages but only {steps} steps: "
                              f"give at least one step per stage")
    stage_steps = [steps // len(stage_cfgs)] * len(stage_cfgs)
    stage_steps[-1] += steps - sum(stage_steps)
    resolved = asdict(cfg)
    resolved.update({"out": str(out), "steps": steps, "temperature": temperature, "temperature_requested": cfg.temperature,
                     "loss": loss_spec, "kind": kind, "seq_len": data.seq_len, "world_size": world,
                     "student_config": s_cfg.to_dict(), "train": asdict(train_cfg), "data_hash": data.digest,
                     "teacher_params": t_params, "student_params": s_params, "resume": False})
    if cfg.scheme == "progressive":
        resolved["progressive"] = {"stages": [{"config": _arch(c), "steps": n} for c, n in zip(stage_cfgs, stage_steps)]}
    if sequence_info is not None:
        resolved["sequence"] = sequence_info
    if "cache" in scheme_kw:
        resolved["teacher_cache"] = {"path": str(scheme_kw["cache"]),
                                     "built": not (Path(scheme_kw["cache"]) / "index.json").is_file()}
    if rank == 0 and not cfg.resume:
        write_json(out / "config.json", resolved)
    if rank == 0:
        console.log_into(out / "edgekd.log")
        timer.save()

    # --- distill: one stage, or a progressive chain of stages each taught by the previous model ---
    causal = kind == "causal-lm"
    ckpts = out / "checkpoints"
    trainers: list = []

    def distill_stage(stage_teacher, stage_student, stage_cfg, n_steps, stream, ckpt_dir, label, options):
        if "cache" in options:
            options = {**options, "cache_data": stream}  # built from this stream where missing, else checked
        cache_sync = "cache" in options and world > 1
        if cache_sync and rank != 0:
            _barrier()  # rank 0 builds the teacher cache first
        scheme = _build_scheme(cfg, stage_teacher, stage_student, device, options)
        if cache_sync and rank == 0:
            _barrier()
        t_cfg = getattr(scheme, "teacher_config", None) or stage_teacher.config
        loss_fn = build_response_loss(loss_spec, stage_cfg, t_cfg, temperature=temperature, alpha=cfg.alpha,
                                      impl=cfg.loss_impl, causal=causal, student_params=count_params(stage_student),
                                      teacher_params=count_params(stage_teacher)).to(device)
        if scheme is not None and hasattr(scheme, "loss_fn"):
            scheme.loss_fn = loss_fn  # the teacher then produces exactly what the loss reads
        needs_h = bool(getattr(loss_fn, "needs_hidden_states", False))
        needs_a = bool(getattr(loss_fn, "needs_attentions", False))
        box: dict = {}

        def distill_objective(batch):
            s_out = _forward(box["t"].ddp_model, batch, loss_fn, needs_h, needs_a)
            with torch.no_grad():
                t_out = scheme.teacher_outputs(batch, s_out) if scheme is not None else \
                    _forward(stage_teacher, batch, loss_fn, needs_h, needs_a)
            total, parts = loss_fn(s_out, t_out, batch["labels"], attention_mask=batch.get("attention_mask"))
            parts = dict(parts or {})
            if getattr(s_out, "logits", None) is not None:
                parts["ce"] = ce_loss(s_out.logits.detach(), batch["labels"], causal)
            return total, parts

        extra = list(loss_fn.parameters())
        if scheme is not None and hasattr(scheme, "extra_parameters"):
            extra += list(scheme.extra_parameters())
        tr = Trainer(stage_student, distill_objective, stream, _train_config(cfg, n_steps), ckpt_dir, kind=kind,
                     extra_params=extra, scheme=scheme, label=label, quiet=cfg.quiet, device=device)
        box["t"] = tr
        if cfg.resume:
            tr.resume()
        tr.train()
        trainers.append(tr)
        return tr

    t0 = time.time()
    if cfg.scheme == "progressive":
        from edgekd.distill.schemes import progressive_chain

        n_stages, init_box = len(stage_cfgs), []

        def train_stage(stage_teacher, stage_cfg):
            i = len(trainers)
            last = i == n_stages - 1
            m, info = build_student(stage_teacher, stage_cfg, calib, init=cfg.student_init, seed=cfg.seed)
            m.to(device)
            # the chain walks the training stream on, so over all stages it sees the scratch baseline's batches
            stream = data.stream_factory(sum(stage_steps[:i]))
            ckpt_dir = ckpts / ("distill" if last else f"distill-stage{i + 1}")
            distill_stage(stage_teacher, m, stage_cfg, stage_steps[i], stream, ckpt_dir, f"distill {i + 1}/{n_stages}",
                          scheme_kw if i == 0 else {})  # a teacher cache serves the first stage, the real teacher's
            init_box.append(info)
            return m

        chain = progressive_chain(teacher, [c.to_dict() for c in stage_cfgs], train_stage)
        student, init_info = chain[-1], init_box[-1]
        history, offset = [], 0
        for i, tr in enumerate(trainers):
            history += [{**h, "step": h["step"] + offset, "stage": i + 1} for h in tr.history]
            offset += tr.cfg.steps
    else:
        chain = [student]
        history = distill_stage(teacher, student, s_cfg, steps, train_stream, ckpts / "distill", "distill", scheme_kw).history
    timer.add("distill", time.time() - t0, 0.0)
    histories = {"distilled": history}
    if rank == 0:
        _save_student(student, tokenizer, out / "student")

    # --- scratch baseline: same architecture, data and steps; hard labels only, random init ---
    scratch = None
    if cfg.scratch:
        scratch, _ = build_student(teacher, s_cfg, None, init="random", seed=cfg.seed + 1)
        scratch.to(device)
        t0 = time.time()
        str_ = Trainer(scratch, None, data.stream_factory(), train_cfg, ckpts / "scratch", kind=kind,
                       label="scratch", quiet=cfg.quiet, device=device)
        str_.objective = scratch_objective(str_.ddp_model, causal)
        if cfg.resume:
            str_.resume()
        str_.train()
        timer.add("scratch", time.time() - t0, 0.0)
        histories["scratch"] = str_.history

    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank != 0:
        return out

    # --- evaluate and report ---
    t0 = time.time()
    models = {"student": student}
    if scratch is not None:
        models["scratch"] = scratch
    models.update({f"stage{i + 1}": m for i, m in enumerate(chain[:-1])})
    evals = evaluate(models, teacher, data.eval_batches, kind, device)
    timer.add("eval", time.time() - t0, 0.0)
    temps = temperature_examples(teacher, data.val_blocks.to(device), tokenizer) if kind == "causal-lm" else []
    sizes = {"teacher": {"params": t_params, "size_mb": size_mb(teacher)},
             "student": {"params": s_params, "size_mb": size_mb(student)}}
    if scratch is not None:
        sizes["scratch"] = {"params": count_params(scratch), "size_mb": size_mb(scratch)}
    timer.add("total", time.time() - t_start, 0.0)  # every invocation's, from loading to the report
    timings = {k: v["wall_s"] for k, v in timer.phases.items()} | {"invocations": timer.invocations}
    rep = build_report(config=resolved, evals=evals, sizes=sizes, histories=histories, temperature_examples=temps,
                       init_info=init_info, student_config=s_cfg.to_dict(), timings=timings)
    rep["kind"] = kind
    rep["status"] = status
    if cfg.scheme == "progressive":
        rep["distillation"]["stages"] = [
            {"stage": i + 1, "config": _arch(m.config), "params": count_params(m), "steps": tr.cfg.steps,
             "eval_loss": evals["student" if m is student else f"stage{i + 1}"]["eval_loss"],
             "final_train_loss": tr.history[-1]["loss"] if tr.history else None}
            for i, (m, tr) in enumerate(zip(chain, trainers))]
    for key in ("sequence", "teacher_cache"):
        if key in resolved:
            rep["distillation"][key] = resolved[key]
    if cfg.export:
        t0 = time.time()
        from edgekd.export import export_and_profile_run

        ex = export_and_profile_run(out, seq_len=min(data.seq_len, 64), device=cfg.device)
        rep["exports"] = ex.get("exports", {})
        rep["latency"]["measured"] = ex.get("measured", [])
        timings["export_and_profile"] = time.time() - t0
    write_run_report(out, rep, histories, temps, kind)
    if not cfg.quiet and status == "complete":  # inside the job, the job prints the summary
        s, b = evals["student"], evals.get("scratch")
        line = f"held-out loss: teacher {evals['teacher']['eval_loss']:.4f}, distilled {s['eval_loss']:.4f}"
        if b:
            line += f", scratch {b['eval_loss']:.4f}"
        from edgekd.console import echo

        echo(line)
        echo(f"run written to {out} (report.md, report.json, student/)")
    return out


def _forward(model, batch, loss_fn, needs_h, needs_a):
    try:
        from edgekd.losses.outputs import forward_for_loss
    except ImportError:
        forward_for_loss = None
    if forward_for_loss is not None:
        return forward_for_loss(model, batch, loss_fn)
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    if needs_h:
        kw["output_hidden_states"] = True
    if needs_a:
        kw["output_attentions"] = True
    return model(**kw)


class _Offline:
    """Frozen teacher, run live (the fallback when the schemes module is not there)."""

    def __init__(self, teacher, loss_fn=None):
        self.teacher, self.loss_fn = teacher, loss_fn

    def teacher_outputs(self, batch, student_out):
        return _forward(self.teacher, batch, self.loss_fn, False, False)

    def after_step(self, student, step):
        pass

    def extra_parameters(self):
        return []


def _build_scheme(cfg: DistillConfig, teacher, student, device, options: Optional[dict] = None):
    try:
        from edgekd.distill.schemes import build_scheme
    except ImportError:
        build_scheme = None
    if build_scheme is None:
        if cfg.scheme != "offline":
            raise EdgekdError(f"scheme {cfg.scheme!r} is not available in this build: use --scheme offline")
        return None
    teachers = [teacher] + [m.to(device).eval() for m in _extra_teachers(cfg, teacher)]
    if options is None:
        options = _split_scheme_config(cfg)[0]
    return build_scheme(cfg.scheme, teachers=teachers, student=student, **options)


def _extra_teachers(cfg: DistillConfig, teacher) -> list:
    """The multi_teacher scheme's other teachers: DistillConfig.teachers and scheme-config "teachers"
    (paths to Hugging Face model directories, or "builtin"), loaded like the first; each must share
    the first teacher's vocabulary (size, and token -> id map where both directories hold a tokenizer)."""
    from edgekd.data.tokenizer import load_tokenizer
    from edgekd.models.loading import load_model, resolve_model_dir
    from edgekd.models.students import check_tokenizers_agree

    def tokenizer_of(path):
        d = resolve_model_dir(path)
        return load_tokenizer(d) if any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")) else None

    given = (cfg.scheme_config or {}).get("teachers", []) if cfg.scheme == "multi_teacher" else []
    if not isinstance(given, list) or not all(isinstance(t, str) for t in given):
        raise EdgekdError(f"scheme 'multi_teacher': teachers must be a list of model directories (or \"builtin\"), "
                          f"got {given!r}")
    out, first_tok = [], None
    for path in list(cfg.teachers) + given:
        m, _, _ = load_model(path, with_tokenizer=False)
        v, v0 = getattr(m.config, "vocab_size", None), getattr(teacher.config, "vocab_size", None)
        if v != v0:
            raise EdgekdError(f"scheme 'multi_teacher': teacher {path} has a vocabulary of {v} tokens, the first "
                              f"teacher's {v0}: all teachers must share one tokenizer")
        first_tok = first_tok or tokenizer_of(cfg.teacher)
        check_tokenizers_agree(first_tok, tokenizer_of(path), where=f"multi_teacher teacher {path}")
        out.append(m)
    return out


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _train_config(cfg: DistillConfig, steps: int):
    from edgekd.distill.trainer import TrainConfig

    return TrainConfig(steps=steps, batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size, lr=cfg.lr,
                       warmup_steps=cfg.warmup_steps if cfg.warmup_steps is not None else max(1, steps // 10),
                       checkpoint_every=cfg.checkpoint_every or max(1, steps // 4), seed=cfg.seed, bf16=cfg.bf16)


# scheme_config keys the run itself reads (the rest go to the scheme: e.g. offline's cache, cache_k)
RUN_OPTIONS = {"progressive": ("sizes",), "multi_teacher": ("teachers",),
               "sequence": ("num_prompts", "prompt_len", "max_new_tokens", "do_sample", "seed")}


def _split_scheme_config(cfg: DistillConfig) -> tuple[dict, dict]:
    """(options for the scheme object, options the run reads)."""
    kw = dict(cfg.scheme_config or {})
    if "cache_data" in kw:
        raise EdgekdError("scheme option 'cache_data' is set by the run (its training data): give only 'cache' and 'cache_k'")
    run_opts = {k: kw.pop(k) for k in RUN_OPTIONS.get(cfg.scheme, ()) if k in kw}
    return kw, run_opts


def _arch(config) -> dict:
    from edgekd.models.arch import ARCH_KEYS, arch_of

    a = arch_of(config)
    return {k: a[k] for k in ARCH_KEYS if k != "vocab_size"}


def _progressive_configs(sizes, teacher, student_config) -> list:
    """The chain's stage configs: the intermediate `sizes` (config overrides, each applied to the previous
    stage's config; default: one stage halfway between teacher and student), then the run's student.
    Checked before any training: every stage has fewer parameters and no more layers than the one before."""
    from edgekd.distill.schemes import _params_of, halfway_sizes, shrunk_config

    teacher_config = teacher.config
    if sizes is None:
        sizes = halfway_sizes(teacher, student_config)
    if not isinstance(sizes, list) or not all(isinstance(o, dict) for o in sizes):
        raise EdgekdError(f"scheme 'progressive': sizes must be a list of config overrides, one per intermediate "
                          f"stage (e.g. [{{\"num_hidden_layers\": 3}}]), got {sizes!r}")
    configs, prev = [], teacher_config
    for overrides in sizes:
        prev = shrunk_config(prev, overrides)
        configs.append(prev)
    configs.append(student_config)
    prev = teacher_config
    for n, c in enumerate(configs, 1):
        have, want = _params_of(type(teacher), prev), _params_of(type(teacher), c)
        if want >= have or c.num_hidden_layers > prev.num_hidden_layers:
            raise EdgekdError(f"scheme 'progressive': stage {n} ({want} parameters, {c.num_hidden_layers} layers) is "
                              f"not smaller than the model before it ({have}, {prev.num_hidden_layers} layers): "
                              f"each stage must shrink (the last stage is the run's student)")
        prev = c
    return configs


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise EdgekdError(f"scheme 'sequence': {name} must be a positive integer, got {v!r}")
    return v


def _sequence_stream(cfg: DistillConfig, opts: dict, teacher, tokenizer, kind: str, data: "_Data", out: Path,
                     rank: int, world: int):
    """Sequence-level KD data (Kim & Rush, 2016): the teacher's continuations (greedy, or seeded sampling) of
    `num_prompts` prompts of `prompt_len` tokens cut from random training blocks, joined with EOS into the
    BlockStream the student trains on (labels on every token: the prompts are real training text).

    The student keeps the run's loss on those blocks: with the default 'kd' loss that is word-level KD
    against the teacher's logits on the generated text on top of the sequence-level data, and with
    alpha = 0 it is the hard-label CE on the generations alone (pure sequence-level KD). The scratch
    baseline trains on the original corpus: what one gets without the teacher. The sequences are saved
    to RUN/sequences.safetensors (tokens, offsets, prompt_lengths) and read back from there on --resume."""
    from safetensors.torch import load_file, save_file

    from edgekd.data.batching import BlockStream
    from edgekd.distill.schemes import SequenceData, generate_sequence_data
    from edgekd.io import atomic_path

    if kind != "causal-lm":
        raise EdgekdError("scheme 'sequence' trains on the teacher's generations: it needs a causal LM teacher, "
                          "not a classifier")
    num = _positive_int("num_prompts", opts.get("num_prompts", 64))
    plen = _positive_int("prompt_len", opts.get("prompt_len", min(32, max(1, data.seq_len // 2))))
    new = _positive_int("max_new_tokens", opts.get("max_new_tokens", 64))
    do_sample = bool(opts.get("do_sample", False))
    seed = int(opts.get("seed", cfg.seed))
    blocks = data.stream_factory().blocks
    plen = min(plen, blocks.shape[1])
    path = out / "sequences.safetensors"
    if cfg.resume and path.is_file():
        saved = load_file(str(path))
        offsets = saved["offsets"].tolist()
        seqs = SequenceData([saved["tokens"][a:b] for a, b in zip(offsets, offsets[1:])],
                            saved["prompt_lengths"].tolist())
    else:
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(blocks.shape[0], generator=g)[:num]
        seqs = generate_sequence_data(teacher, [blocks[i, :plen] for i in pick.tolist()], max_new_tokens=new,
                                      do_sample=do_sample, seed=seed)
        if rank == 0:
            lengths = torch.tensor([0] + [len(x) for x in seqs.sequences], dtype=torch.int64)
            with atomic_path(path) as tmp:
                save_file({"tokens": torch.cat(seqs.sequences).contiguous(), "offsets": lengths.cumsum(0),
                           "prompt_lengths": torch.tensor(seqs.prompt_lengths, dtype=torch.int64)}, str(tmp))
    eos = tokenizer.eos_token_id if tokenizer is not None and tokenizer.eos_token_id is not None else \
        teacher.config.eos_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    tokens = seqs.tokens(int(eos))
    if tokens.numel() < data.seq_len:
        raise EdgekdError(f"scheme 'sequence': the teacher generated {tokens.numel()} tokens, fewer than one block of "
                          f"{data.seq_len}: raise num_prompts or max_new_tokens, or lower --seq-len")
    info = {"num_sequences": len(seqs), "prompt_len": plen, "max_new_tokens": new, "do_sample": do_sample,
            "seed": seed, "generated_tokens": sum(len(seqs.continuation(i)) for i in range(len(seqs))),
            "train_tokens": int(tokens.numel()), "path": str(path)}
    return BlockStream(tokens, data.seq_len, cfg.batch_size, cfg.seed, rank, world), info
