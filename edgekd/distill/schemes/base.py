"""The scheme contract: what a run's stages are, what each trains on, and where a stage's teacher
outputs come from.

    plan = SchemeClass.plan(run)                      # the stages, before any training
    stream = SchemeClass.train_stream(run, position)  # what a stage trains on (default: the run's data)
    scheme = build_scheme(name, teachers=[...], student=student, **options)   # one per stage
    scheme.use_loss(loss_fn)                          # the teacher then produces what the loss reads
    batch = scheme.training_batch(student, batch, step)   # the trainer's batch (on_policy: student samples)
    teacher_out = scheme.teacher_outputs(batch, student_out)
    scheme.after_step(student, step); scheme.extra_parameters(); scheme.state_dict() / load_state_dict()
    scheme.teacher_config                             # build the loss against this (the EMA for "self")

`run` is the engine's RunContext (edgekd.distill.run): cfg, teacher, tokenizer, kind, data, student_config,
steps, out, rank, world. A scheme class declares the scheme_config keys its plan reads in `plan_options`;
the others are the stage object's constructor options (checked by build_scheme).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.losses import LossInputs, Needs, forward_for_loss, get_field, unwrap

SCHEMES: dict[str, type] = {}


def register_scheme(name: str):
    def deco(cls):
        cls.name = name
        SCHEMES[name] = cls
        return cls
    return deco


def scheme_class(name: str) -> type:
    if name not in SCHEMES:
        raise EdgekdError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    return SCHEMES[name]


def build_scheme(name: str, *, teachers: Sequence[nn.Module] = (), student: nn.Module, **cfg) -> "Scheme":
    """The scheme `name` with its options; an unknown name or option is an EdgekdError naming it."""
    cls = scheme_class(name)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "teachers", "student")]
    for key in cfg:
        if key not in allowed:
            raise EdgekdError(f"scheme {name!r}: unknown option {key!r}; it takes {', '.join(allowed) or 'none'}")
    return cls(teachers=list(teachers), student=student, **cfg)


def needs_of(student_out: Any, loss_fn: Any) -> Needs:
    """What the teacher must produce: the loss's needs if known, else whatever the student output has."""
    if loss_fn is not None:
        return Needs.of(loss_fn)
    nonempty = lambda f: bool(get_field(student_out, f))  # noqa: E731
    return Needs(needs_logits=get_field(student_out, "logits") is not None,
                 needs_hidden_states=nonempty("hidden_states"), needs_attentions=nonempty("attentions"),
                 needs_last_hidden=get_field(student_out, "lm_head_weight") is not None)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (no dropout) and no gradients: a teacher that only answers."""
    model.eval()
    model.requires_grad_(False)
    return model


@dataclass
class Stage:
    """One training stage: the model it trains, for how long, on what, taught by whom."""

    label: str                       # progress-bar label
    student_config: Any              # the config of the model the stage trains
    steps: int
    checkpoint: str                  # its folder under RUN/checkpoints
    stream: Any                      # the training stream (edgekd.data.batching)
    teachers: Optional[list] = None  # None: the previous stage's trained student
    options: dict = field(default_factory=dict)  # the stage's scheme-object options


@dataclass
class Plan:
    """A run's stages and what the plan adds to config.json and report.json's `distillation`."""

    stages: list
    record: dict = field(default_factory=dict)


def split_options(cls: type, scheme_config: dict) -> tuple[dict, dict]:
    """(options for the stage's scheme object, options the plan reads)."""
    kw = dict(scheme_config or {})
    if "cache_data" in kw:
        raise EdgekdError("scheme option 'cache_data' is set by the run (its training data): give only 'cache' and "
                          "'cache_k'")
    return kw, {k: kw.pop(k) for k in cls.plan_options if k in kw}


class Scheme:
    """Base: one stage, the run's student, taught by a frozen single teacher run live."""

    name = ""
    plan_options: tuple = ()
    takes_other_tokenizer = False  # its teacher_outputs runs the base's live teacher (use_tokens)

    # -- the plan (class level: before any stage exists) --
    @classmethod
    def plan(cls, run) -> Plan:
        options, plan_options = split_options(cls, run.cfg.scheme_config)
        return Plan([Stage("distill", run.student_config, run.steps, "distill", cls.train_stream(run, 0),
                           cls.teachers_for(run, plan_options), options)])

    @classmethod
    def train_stream(cls, run, position: int):
        """What a stage trains on: the run's training data from global batch `position`."""
        return run.data.stream(position)

    @classmethod
    def teachers_for(cls, run, plan_options: dict) -> list:
        return [run.teacher]

    # -- one stage --
    def __init__(self, *, teachers: list, student: nn.Module, loss_fn: Any = None):
        self.teachers, self.loss_fn = teachers, loss_fn
        self.tokens = None

    def use_loss(self, loss_fn) -> None:
        """The loss the stage trains with: the teacher then produces exactly what it reads."""
        self.loss_fn = loss_fn

    def use_tokens(self, tokens) -> None:
        """A teacher with another tokenizer (a data.alignment.CrossTokenizer): each batch is re-tokenised for
        it, and its output carries the alignment and the shared vocabulary (losses/cross_vocab.py)."""
        if not self.takes_other_tokenizer or getattr(self, "cache", None) is not None:
            raise EdgekdError(f"scheme {self.name!r} cannot run a teacher with another tokenizer: use 'offline' "
                              f"(without a teacher cache)")
        self.tokens = tokens

    @property
    def teacher(self) -> nn.Module:
        return self.teachers[0]

    @property
    def teacher_config(self):
        """Config of the model whose outputs teacher_outputs returns: build the loss against it."""
        return getattr(unwrap(self.teacher), "config", None) if self.teachers else None

    def require_one_teacher(self) -> None:
        if len(self.teachers) != 1:
            raise EdgekdError(f"scheme {self.name!r} takes exactly one teacher, got {len(self.teachers)}")

    def run_teacher(self, model: nn.Module, batch: dict, needs: Needs) -> LossInputs:
        with torch.no_grad():
            return forward_for_loss(model, batch, needs)

    def teacher_outputs(self, batch: dict, student_out: Any):
        if self.tokens is None:
            return self.run_teacher(self.teacher, batch, needs_of(student_out, self.loss_fn))
        al = self.tokens.align(batch["input_ids"].cpu(), None if batch.get("attention_mask") is None
                               else batch["attention_mask"].cpu())
        out = self.run_teacher(self.teacher, {"input_ids": al.teacher_ids, "attention_mask": al.teacher_mask}, Needs())
        out.alignment, out.vocab_map = al, self.tokens.vocab_map
        return out

    def training_batch(self, student: nn.Module, batch: dict, step: int) -> dict:
        """What optimiser step `step` trains on, given the stream's batch (on_policy: the student's samples)."""
        return batch

    def after_step(self, student: nn.Module, step: int) -> None:
        pass

    def extra_parameters(self) -> list:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
