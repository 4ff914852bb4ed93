"""Online distillation: the teacher trains alongside the student, in the same optimiser step."""

from __future__ import annotations

import math
from typing import Optional

import torch

from edgekd.distill.schemes.base import Scheme, needs_of, register_scheme
from edgekd.errors import EdgekdError
from edgekd.losses import Needs, forward_for_loss, hard_label_loss, is_causal, unwrap


@register_scheme("online")
class OnlineScheme(Scheme):
    """The teacher trains alongside the student, in the same optimizer step.

    teacher_outputs runs the teacher in train mode WITH gradients (even inside the trainer's
    no_grad) and attaches `teacher_loss` = teacher_weight · CE(teacher, labels) to its output; the
    LossSum adds it to the total (part "teacher_ce"). The distillation terms see the teacher
    detached, so the student's loss never moves the teacher. extra_parameters() returns the
    teacher's parameters: the trainer optimises them with the student's.
    """

    def __init__(self, *, teachers, student, teacher_weight: float = 1.0, causal: Optional[bool] = None, loss_fn=None):
        super().__init__(teachers=teachers, student=student, loss_fn=loss_fn)
        self.require_one_teacher()
        if not (isinstance(teacher_weight, (int, float)) and teacher_weight >= 0 and math.isfinite(teacher_weight)):
            raise EdgekdError(f"scheme 'online': teacher_weight must be a finite number >= 0, got {teacher_weight!r}")
        self.teacher_weight = float(teacher_weight)
        self.causal = is_causal(unwrap(self.teacher).config) if causal is None else bool(causal)
        self.teacher.train()
        self.teacher.requires_grad_(True)

    def teacher_outputs(self, batch, student_out):
        needs = needs_of(student_out, self.loss_fn)
        needs = Needs(True, needs.needs_hidden_states, needs.needs_attentions, needs.needs_last_hidden)
        with torch.enable_grad():
            out = forward_for_loss(self.teacher, batch, needs)
            labels = batch.get("labels")
            if labels is not None and self.teacher_weight > 0:
                out.teacher_loss = self.teacher_weight * hard_label_loss(out.logits, labels.to(out.logits.device), self.causal)
        return out

    def extra_parameters(self) -> list:
        return [p for p in self.teacher.parameters() if p.requires_grad]
