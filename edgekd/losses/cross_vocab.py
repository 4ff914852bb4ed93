"""Losses between a teacher and a student with different tokenizers, at the positions where both have
read the same text (`data.alignment`; the teacher output carries `alignment` and `vocab_map`).

Both mix by α with the student's own hard-label CE over all its tokens (α weights the teacher term), as
the response losses do; neither needs the vocabularies to agree.
"""

from __future__ import annotations

import torch

from edgekd import kernels
from edgekd.errors import EdgekdError
from edgekd.hyperparams import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_DIVERGENCE, DEFAULT_SKEW, DEFAULT_TEMPERATURE
from edgekd.losses.base import LossTerm, LossView, Setup, hard_label_loss, register_loss


def aligned_rows(view: LossView, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(student logits, teacher logits) at the aligned positions: [P, V_student], [P, V_teacher]."""
    s = view.student("logits", loss)
    t = view.teacher("logits", loss)
    al = view.teacher("alignment", loss)
    if s.dim() != 3 or not view.causal:
        raise EdgekdError(f"loss {loss!r} aligns the token sequences of causal LMs; this student is not one")
    sr = s.reshape(-1, s.shape[-1])[al.student_rows.to(s.device)]
    tr = t.reshape(-1, t.shape[-1])[al.teacher_rows.to(t.device)].detach().to(s.device)
    return sr, tr


def _mix(alpha: float, teacher_term: torch.Tensor, view: LossView, loss: str) -> torch.Tensor:
    if alpha >= 1.0:
        return teacher_term
    ce = hard_label_loss(view.student("logits", loss), view.labels, view.causal)
    return alpha * teacher_term + (1.0 - alpha) * ce


@register_loss("uld")
class UniversalLogitLoss(LossTerm):
    """Universal Logit Distillation (Boizard et al., 2024): at each aligned position, the L1 distance
    between the student's and the teacher's probabilities at T, each sorted in decreasing order (the
    shorter vocabulary padded with zeros): it compares the shapes of the two distributions, which needs
    no shared vocabulary. Averaged over aligned positions (0 where a batch has none)."""

    takes_temperature = True
    needs_logits = True
    needs_alignment = True

    def __init__(self, setup: Setup, temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA):
        super().__init__()
        self.temperature, self.alpha = float(temperature), float(alpha)

    def forward(self, view: LossView) -> torch.Tensor:
        sr, tr = aligned_rows(view, self.name)
        if sr.shape[0] == 0:
            d = sr.sum() * 0.0
        else:
            ps = torch.softmax(sr.float() / self.temperature, -1).sort(-1, descending=True).values
            pt = torch.softmax(tr.float() / self.temperature, -1).sort(-1, descending=True).values
            width = max(ps.shape[-1], pt.shape[-1])
            ps = torch.nn.functional.pad(ps, (0, width - ps.shape[-1]))
            pt = torch.nn.functional.pad(pt, (0, width - pt.shape[-1]))
            d = (ps - pt).abs().sum(-1).mean()
        return _mix(self.alpha, d, view, self.name)


@register_loss("token_align")
class TokenAlignmentLoss(LossTerm):
    """KD over the shared vocabulary at the aligned positions: the teacher's logits are carried onto the
    student's ids of the tokens both vocabularies hold (same decoded string); every other student token
    is −inf for the teacher, so its distribution is renormalised over the shared tokens (the fused
    kernel's vocabulary-mask semantics), and the divergence (forward KL by default) is the kernel's."""

    takes_temperature = True
    needs_logits = True
    needs_alignment = True

    def __init__(self, setup: Setup, temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA,
                 divergence: str = DEFAULT_DIVERGENCE, beta: float = DEFAULT_BETA, skew: float = DEFAULT_SKEW):
        super().__init__()
        self.temperature, self.alpha, self.divergence, self.beta = float(temperature), float(alpha), divergence, float(beta)
        self.skew = float(skew)

    def forward(self, view: LossView) -> torch.Tensor:
        sr, tr = aligned_rows(view, self.name)
        vmap = view.teacher("vocab_map", self.name).to(sr.device)
        if vmap.shape[0] != sr.shape[-1]:
            raise EdgekdError(f"loss {self.name!r}: the vocabulary map has {vmap.shape[0]} entries for a student "
                              f"vocabulary of {sr.shape[-1]}")
        if not bool((vmap >= 0).any()):
            raise EdgekdError(f"loss {self.name!r}: teacher and student tokenizers share no token: use 'uld'")
        t_student = tr.float()[:, vmap.clamp(min=0)].masked_fill(vmap < 0, float("-inf"))
        kd = kernels.kd_loss(sr, t_student, None, temperature=self.temperature, alpha=1.0,
                             divergence=self.divergence, beta=self.beta, skew=self.skew) if sr.shape[0] else sr.sum() * 0.0
        return _mix(self.alpha, kd, view, self.name)
