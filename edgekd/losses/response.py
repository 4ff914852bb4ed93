"""Response losses: the student's output distribution against the teacher's (Hinton et al., 2015).

All of them mix with the hard-label CE by α (α weights the teacher term) and count nothing for
rows whose label is -100; for causal LMs logits at t are matched with labels at t+1.
"""

from __future__ import annotations

import inspect
import math

import torch

from edgekd import kernels
from edgekd.errors import EdgekdError
from edgekd.kernels.reference import DIVERGENCES
from edgekd.losses.base import (IGNORE_INDEX, LOSSES, LossTerm, LossView, Setup, hard_label_loss, register_loss,
                                response_rows)
from edgekd.losses.outputs import TeacherMixture, TopKLogits, get_field


def check_response_args(loss: str, temperature, alpha, divergence="forward_kl", beta=0.5, skew=0.1) -> None:
    """User-facing checks of T, α, divergence, β and the skew λ: one EdgekdError line naming the argument."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise EdgekdError(f"loss {loss!r}: temperature must be a positive number or 'auto', got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise EdgekdError(f"loss {loss!r}: alpha must lie in [0, 1], got {alpha!r}")
    check_divergence_args(loss, divergence, beta, skew)


def check_divergence_args(loss: str, divergence="forward_kl", beta=0.5, skew=0.1) -> None:
    """The divergence, β and skew λ of a response loss; also run on the --loss spec before a run loads anything."""
    if divergence not in DIVERGENCES:
        raise EdgekdError(f"loss {loss!r}: unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise EdgekdError(f"loss {loss!r}: beta must lie in [0, 1], got {beta!r}")
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not 0.0 < skew <= 1.0:
        raise EdgekdError(f"loss {loss!r}: skew must lie in (0, 1] (DistiLLM uses 0.1), got {skew!r}")


def check_spec_divergences(spec) -> None:
    """check_divergence_args for every term of a loss spec that takes a divergence (before any model is loaded)."""
    for raw in spec or []:
        name = raw.get("name") if isinstance(raw, dict) else None
        cls = LOSSES.get(name) if isinstance(name, str) else None
        if cls is None:
            continue  # build_loss names what is wrong with it
        params = inspect.signature(cls.__init__).parameters
        if "divergence" in params:
            check_divergence_args(name, *(raw.get(k, params[k].default) for k in ("divergence", "beta", "skew")))


@register_loss("ce")
class HardLabelLoss(LossTerm):
    """Cross-entropy on the labels alone: the scratch baseline's loss; reads no teacher."""

    needs_teacher = False
    needs_logits = True

    def __init__(self, setup: Setup):
        super().__init__()

    def forward(self, view: LossView) -> torch.Tensor:
        if view.labels is None:
            raise EdgekdError("loss 'ce' needs labels")
        return hard_label_loss(view.student("logits", self.name), view.labels, view.causal)


@register_loss("kd")
class KDLoss(LossTerm):
    """α · T² · D(teacher ‖ student at T) + (1 − α) · CE, through kernels.kd_loss.

    A TopKLogits teacher is expanded to full-vocabulary logits that are −inf off the kept entries:
    the teacher distribution is renormalised over its top-k; for forward KL, JSD and CE the student's
    log-softmax runs over the whole vocabulary. Forward KL is then exact on the kept entries and
    ignores the teacher's tail (its probability outside the top-k); reverse KL compares the student
    renormalised over the top-k with the teacher there (a teacher mask masks the student too: the
    student's mass outside the top-k is neither penalised nor moved); JSD and the skew KLs treat the
    teacher's tail as zero. `skew` is λ of skew_kl / skew_reverse_kl (DistiLLM), `beta` jsd's β.
    """

    takes_temperature = True
    needs_logits = True

    def __init__(self, setup: Setup, temperature: float = 2.0, alpha: float = 0.5,
                 divergence: str = "forward_kl", beta: float = 0.5, skew: float = 0.1):
        super().__init__()
        check_response_args(self.name, temperature, alpha, divergence, beta, skew)
        self.temperature, self.alpha, self.divergence, self.beta = float(temperature), float(alpha), divergence, float(beta)
        self.skew = float(skew)

    def forward(self, view: LossView) -> torch.Tensor:
        t = view.teacher("logits", self.name)
        if isinstance(view.teacher_out, TeacherMixture):
            t = view.teacher_out.logits_at(self.temperature)
        s, t, labels = response_rows(view, view.student("logits", self.name), t)
        if isinstance(t, TopKLogits):
            t = t.dense(s.shape[-1], s.dtype)
        return kernels.kd_loss(s, t.to(s.device), labels, temperature=self.temperature, alpha=self.alpha,
                               divergence=self.divergence, beta=self.beta, skew=self.skew, ignore_index=IGNORE_INDEX)


@register_loss("mse_logits")
class MSELogitsLoss(LossTerm):
    """α · mean_v (s − t)² + (1 − α) · CE per row, rows averaged (Kim et al., 2021).

    The temperature has no effect: T² · MSE(s/T, t/T) = MSE(s, t); it is accepted so one config
    can set T for every response loss. With a TopKLogits teacher the MSE runs over the kept entries.
    """

    takes_temperature = True
    needs_logits = True

    def __init__(self, setup: Setup, temperature: float = 2.0, alpha: float = 0.5):
        super().__init__()
        check_response_args(self.name, temperature, alpha)
        self.temperature, self.alpha = float(temperature), float(alpha)

    def forward(self, view: LossView) -> torch.Tensor:
        s, t, labels = response_rows(view, view.student("logits", self.name), view.teacher("logits", self.name))
        s = s.float()
        if isinstance(t, TopKLogits):
            diff = s.gather(1, t.indices.to(s.device).long()) - t.values.to(s.device).float()
        else:
            diff = s - t.to(s.device).float().detach()
        row = self.alpha * diff.pow(2).mean(-1)
        counted = torch.ones_like(row, dtype=torch.bool)
        if labels is not None:
            counted = labels != IGNORE_INDEX
            if self.alpha < 1:
                safe = torch.where(counted, labels, torch.zeros_like(labels))
                ce = -torch.log_softmax(s, -1).gather(1, safe[:, None]).squeeze(1)
                row = row + (1 - self.alpha) * ce
            row = torch.where(counted, row, torch.zeros_like(row))
        return row.sum() / counted.sum().clamp(min=1)


@register_loss("kd_fused_linear")
class FusedLinearKDLoss(LossTerm):
    """The "kd" loss computed from final hidden states and both LM heads, never materialising logits.

    Reads, from both outputs: `last_hidden_state` (the LM head's input, [B,S,H]) and
    `lm_head_weight` ([V,H]) / `lm_head_bias`; `forward_for_loss` produces them. A top-k cache
    cannot feed it (it needs the teacher's hidden states).
    """

    takes_temperature = True
    needs_logits = False
    needs_last_hidden = True

    def __init__(self, setup: Setup, temperature: float = 2.0, alpha: float = 0.5,
                 divergence: str = "forward_kl", beta: float = 0.5, chunk_size: int | None = None,
                 skew: float = 0.1):
        super().__init__()
        check_response_args(self.name, temperature, alpha, divergence, beta, skew)
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise EdgekdError(f"loss {self.name!r}: chunk_size must be a positive integer, got {chunk_size!r}")
        self.temperature, self.alpha, self.divergence, self.beta = float(temperature), float(alpha), divergence, float(beta)
        self.chunk_size, self.skew = chunk_size, float(skew)

    def forward(self, view: LossView) -> torch.Tensor:
        sh = view.student("last_hidden_state", self.name)
        th = view.teacher("last_hidden_state", self.name)
        sw = view.student("lm_head_weight", self.name)
        tw = view.teacher("lm_head_weight", self.name)
        if sw.shape[0] != tw.shape[0]:
            raise EdgekdError(f"teacher vocabulary ({tw.shape[0]}) differs from the student's ({sw.shape[0]}): "
                              f"teacher and student tokenizers must agree")
        labels = view.labels
        if sh.dim() == 3 and view.causal:
            sh, th = sh[:, :-1], th[:, :-1]
            labels = None if labels is None else labels[:, 1:]
        sh = sh.reshape(-1, sh.shape[-1])
        th = th.detach().reshape(-1, th.shape[-1]).to(sh.device)
        labels = None if labels is None else labels.reshape(-1).to(sh.device).long()
        tb = get_field(view.teacher_out, "lm_head_bias")
        return kernels.fused_linear_kd_loss(
            sh, sw, th, tw.detach().to(sh.device), labels,
            student_bias=get_field(view.student_out, "lm_head_bias"),
            teacher_bias=None if tb is None else tb.detach().to(sh.device),
            chunk_size=self.chunk_size, temperature=self.temperature, alpha=self.alpha,
            divergence=self.divergence, beta=self.beta, skew=self.skew, ignore_index=IGNORE_INDEX)
