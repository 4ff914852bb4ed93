"""Self-distillation: the student's exponential moving average is its teacher."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgekd.distill.schemes.base import Scheme, freeze, needs_of, register_scheme
from edgekd.errors import EdgekdError
from edgekd.losses import unwrap


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · model for parameters; buffers are copied."""
    params = dict(model.named_parameters())
    for name, p in ema.named_parameters():
        p.lerp_(params[name].detach().to(p.dtype), 1.0 - decay)
    buffers = dict(model.named_buffers())
    for name, b in ema.named_buffers():
        b.copy_(buffers[name])


@register_scheme("self")
class SelfScheme(Scheme):
    """The student's exponential moving average is its teacher (no grad); any given teachers are unused."""

    def __init__(self, *, teachers, student, decay: float = 0.999, loss_fn=None):
        super().__init__(teachers=teachers, student=student, loss_fn=loss_fn)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise EdgekdError(f"scheme 'self': decay must lie in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.ema = freeze(copy.deepcopy(unwrap(student)))

    @property
    def teacher_config(self):
        return getattr(self.ema, "config", None)

    def teacher_outputs(self, batch, student_out):
        return self.run_teacher(self.ema, batch, needs_of(student_out, self.loss_fn))

    def after_step(self, student, step):
        ema_update(self.ema, unwrap(student), self.decay)

    def state_dict(self) -> dict:
        return {"ema": {k: v.detach().clone() for k, v in self.ema.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])
