"""The engine's configuration: what one distillation run depends on (RUN/config.json is it, resolved).

The job's fields (target, budget, where to profile) are not here: they live in the job's config
(`edgekd.pipeline.JobConfig`), which nests this one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Union

from edgekd.checks import parse_loss_spec, read_json as _read_json  # noqa: F401  (parse_loss_spec: re-exported)
from edgekd.errors import EdgekdError
from edgekd.hyperparams import DEFAULT_ALPHA, DEFAULT_TEMPERATURE

DEFAULT_STEPS = 300
# The batch size and peak learning rate where a run does not set them (the CLI and the Python API alike):
# every teacher's but an image classifier's (models.vision.IMAGE_TRAINING: a small CNN learns at a larger batch
# and rate).
TRAINING_DEFAULTS = {"batch_size": 8, "lr": 2e-3}


def training_defaults(teacher, batch_size: Optional[int] = None, lr: Optional[float] = None) -> tuple:
    """(batch_size, lr): those given, the others the teacher's kind's defaults."""
    if batch_size is not None and lr is not None:
        return batch_size, lr
    from edgekd.models.vision import IMAGE_TRAINING, teacher_is_image

    d = IMAGE_TRAINING if teacher is not None and teacher_is_image(teacher) else TRAINING_DEFAULTS
    return (d["batch_size"] if batch_size is None else batch_size), (d["lr"] if lr is None else lr)


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
    temperature: Union[float, str] = DEFAULT_TEMPERATURE  # or "auto": log2(teacher/student params) + 1
    alpha: float = DEFAULT_ALPHA
    loss: Optional[Union[str, list]] = None       # JSON list, path to one, or a loss name
    scheme: str = "offline"
    scheme_config: dict = field(default_factory=dict)
    teachers: list = field(default_factory=list)  # extra teachers (multi_teacher)
    seed: int = 0
    torch_device: Optional[str] = None             # torch device to train on; None: cuda if present
    batch_size: Optional[int] = None               # None: training_defaults (8; 32 for an image teacher)
    micro_batch_size: Optional[int] = None
    parallel: str = "ddp"                          # under torchrun: "ddp" (replicas) or "fsdp" (sharded, FSDP2)
    seq_len: int = 256
    lr: Optional[float] = None                     # None: training_defaults (2e-3; 1e-2 for an image teacher)
    warmup_steps: Optional[int] = None
    checkpoint_every: Optional[int] = None
    keep_checkpoints: int = 1                      # checkpoints kept per trained model (the newest)
    eval_blocks: int = 48
    eval_every: Optional[int] = None               # held-out loss curve every N steps; None: steps // 10, 0: off
    baselines: Union[str, list] = "ce_only,scratch"  # the baselines trained beside the student (BASELINE_NAMES), or "none"
    student_init: str = "teacher"
    augment: bool = True                           # image classifiers: random shifts of the training images
    quant_aware: list = field(default_factory=list)  # runtime recipes to distil into after float ("litert-lm:int4", ...)
    qad_steps: Optional[int] = None                # QAD steps per recipe; None: steps // 3 (distill.quant_aware)
    init_batches: int = 4                          # batches the student's initialisation may look at
    loss_impl: str = "fused"                       # "eager": plain PyTorch loss (benchmarks)
    bf16: Optional[bool] = None
    gradient_checkpointing: Optional[bool] = None  # None: where one row's activations exceed memory.FORWARD_BYTES
    threads: Optional[int] = None
    quiet: bool = False

    def __post_init__(self):
        self.batch_size, self.lr = training_defaults(self.teacher, self.batch_size, self.lr)

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        """Unknown keys are an error naming them (a typo must not be silently ignored)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise EdgekdError(f"unknown distill option(s) {', '.join(unknown)}: the engine takes {', '.join(sorted(names))}")
        return cls(**d)


# Fields that may differ on --resume: they change how a run is watched, not what it computes.
RESUME_FREE = ("resume", "quiet", "out", "threads")


def changed_fields(given: dict, saved: dict, defaults: dict, free: tuple = RESUME_FREE) -> list[str]:
    """The options a --resume was given that disagree with the saved run: set (not at their default)
    and different from what the run saved. The saved config may hold resolved values (steps, a loss
    spec), so an option left at its default never counts as changed."""
    out = []
    for k, v in given.items():
        if k in free or k not in saved or v == defaults.get(k) or _same(v, saved[k]):
            continue
        out.append(k)
    return out


def _same(a, b) -> bool:
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


def resume_config(cfg: DistillConfig, out: Path) -> DistillConfig:
    """The saved config of the run in `out`, for --resume; flags that disagree with it are an error."""
    saved_path = out / "config.json"
    if not saved_path.is_file():
        raise EdgekdError(f"nothing to resume in {out} (no config.json): start a run there without --resume")
    saved = read_saved_json(saved_path)
    saved["temperature"] = saved.get("temperature_requested", saved.get("temperature"))
    given = asdict(cfg) | {"baselines": baseline_names(cfg.baselines)}
    refuse_changes(given, saved, asdict(DistillConfig()) | {"baselines": list(BASELINE_NAMES)}, "run")
    names = {f.name for f in fields(DistillConfig)}
    resumed = DistillConfig(**{k: v for k, v in saved.items() if k in names})
    resumed.resume, resumed.quiet, resumed.out, resumed.threads = True, cfg.quiet, str(out), cfg.threads or resumed.threads
    return resumed


def refuse_changes(given: dict, saved: dict, defaults: dict, what: str, free: tuple = RESUME_FREE) -> None:
    """One line naming every option a --resume was given that the saved `what` (run, job) disagrees with."""
    changed = changed_fields(given, saved, defaults, free)
    if changed:
        listed = ", ".join(f"{k} (given {given[k]!r}, the run has {saved[k]!r})" for k in changed)
        raise EdgekdError(f"--resume continues the {what} as it was configured; these options differ: {listed}. "
                          f"Drop them, or start a new run with another --out")


# What a run was computed from, by content: hashes recorded in config.json at the start (run.load_run).
IDENTITY = {"data_hash": "the content of --data {data}", "teacher_hash": "the teacher {teacher} (its config.json or weights)"}


def refuse_changed_inputs(saved: dict, now: dict) -> None:
    """--resume continues a run on the same data and teacher: one whose content changed since the run started
    (a hash in config.json differs) is one line naming it. A run saved before a hash was recorded is not checked."""
    changed = [what.format(**now) for key, what in IDENTITY.items()
               if saved.get(key) and now.get(key) and saved[key] != now[key]]
    if changed:
        raise EdgekdError(f"--resume continues the run on what it started with, but {' and '.join(changed)} changed "
                          f"since (the content hash in config.json differs): restore it, or start a new run with "
                          f"another --out")


def read_saved_json(path: Path):
    """A file a run saved for --resume (config.json, job.json); corrupt is one line."""
    return _read_json(path, "is corrupt: start a new run with another --out")


def resolve_out(cfg: DistillConfig) -> Path:
    """Absolute: nothing downstream may depend on the current directory."""
    if cfg.out:
        return Path(cfg.out).expanduser().absolute()
    return Path.cwd() / "runs" / time.strftime("distill-%Y%m%d-%H%M%S")


BASELINE_NAMES = ("ce_only", "scratch")


def baseline_names(value) -> list[str]:
    """--baselines as a list of names: "ce_only,scratch", "ce_only", "scratch", "none" (or a list of them)."""
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value or [])
    if names == ["none"]:
        return []
    bad = [n for n in names if n not in BASELINE_NAMES]
    if bad or len(set(names)) != len(names):
        raise EdgekdError(f"--baselines {','.join(map(str, names))!s}: give ce_only,scratch, ce_only, scratch or none")
    return [n for n in BASELINE_NAMES if n in names]


def validate(cfg: DistillConfig, world_size: int = 1) -> None:
    """Every option of the run, checked before anything is loaded or written (edgekd.checks);
    `world_size`: the processes torchrun started (Settings.world_size)."""
    from edgekd.checks import number
    from edgekd.distill.parallel import check_parallel
    from edgekd.distill.quant_aware import check_config, recipe_keys
    from edgekd.distill.schemes import SCHEMES
    from edgekd.losses.combine import check_spec
    from edgekd.models.loading import read_config_dict, resolve_model_dir
    from edgekd.run_inputs import distill_inputs

    cfg.baselines = baseline_names(cfg.baselines)
    number("--keep-checkpoints", cfg.keep_checkpoints, low=1, integer=True)
    if cfg.scheme not in SCHEMES:
        raise EdgekdError(f"unknown scheme {cfg.scheme!r}: choose one of {', '.join(SCHEMES)}")
    check_parallel(cfg.parallel, cfg.scheme, world_size)
    if cfg.loss_impl not in ("fused", "eager"):
        raise EdgekdError(f"unknown loss implementation {cfg.loss_impl!r}: use 'fused' or 'eager'")
    teacher_config = read_config_dict(resolve_model_dir(cfg.teacher)) if cfg.teacher == "builtin" else None
    distill_inputs(asdict(cfg), teacher_config)
    check_spec(parse_loss_spec(cfg.loss))
    check_config(cfg.quant_aware, cfg.qad_steps, None)
    cfg.quant_aware = [f"{f}:{q}" for f, q in recipe_keys(cfg.quant_aware)]
