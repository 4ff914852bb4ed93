"""Response losses: the student's output distribution against the teacher's (Hinton et al., 2015).

All of them mix with the hard-label CE by α (α weights the teacher term) and count nothing for
rows whose label is -100; for causal LMs logits at t are matched with labels at t+1.
"""

from __future__ import annotations

import torch

from edgekd import kernels
from edgekd.errors import EdgekdError
from edgekd.hyperparams import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_DIVERGENCE, DEFAULT_SKEW, DEFAULT_TEMPERATURE
from edgekd.losses.base import (IGNORE_INDEX, LossTerm, LossView, Setup, hard_label_loss, register_loss,
                                response_rows)
from edgekd.losses.outputs import TeacherMixture, TopKLogits, get_field


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


def heads_reproducible(config) -> bool:
    """Whether logits are exactly the LM head over the last hidden state (no softcapping or scaling), so
    the loss may compute them chunk by chunk from the hidden states."""
    return config is not None and not (getattr(config, "final_logit_softcapping", None)
                                       or getattr(config, "logit_scale", None))


@register_loss("kd")
class KDLoss(LossTerm):
    """α · T² · D(teacher ‖ student at T) + (1 − α) · CE, through the fused kernels.

    For causal LMs (`fused_linear` None: whenever both heads are plain linear maps) the student's logits
    are never materialised: it reads the student's final hidden states and LM head and computes the logits
    chunk by chunk inside `kernels.fused_linear_kd_loss`, the teacher's too when the teacher output carries
    them (a live teacher); a teacher given as logits (a mixture of teachers) or as its top-k (an offline
    cache) is read as it is. `fused_linear: false` takes full logits (`kernels.kd_loss`); by default an
    output without hidden states and head (a plain HF output) is read through its logits.

    A TopKLogits teacher stands for full-vocabulary logits that are −inf off the kept entries: the
    teacher distribution is renormalised over its top-k; for forward KL, JSD and CE the student's
    log-softmax runs over the whole vocabulary. Forward KL is then exact on the kept entries and
    ignores the teacher's tail (its probability outside the top-k); reverse KL compares the student
    renormalised over the top-k with the teacher there (a teacher mask masks the student too: the
    student's mass outside the top-k is neither penalised nor moved); JSD and the skew KLs treat the
    teacher's tail as zero. `skew` is λ of skew_kl / skew_reverse_kl (DistiLLM), `beta` jsd's β.
    """

    takes_temperature = True

    def __init__(self, setup: Setup, temperature: float = DEFAULT_TEMPERATURE,
                 alpha: float = DEFAULT_ALPHA, divergence: str = DEFAULT_DIVERGENCE, beta: float = DEFAULT_BETA,
                 skew: float = DEFAULT_SKEW,
                 fused_linear: bool | None = None, chunk_size: int | None = None):
        super().__init__()
        if fused_linear is not None and not isinstance(fused_linear, bool):
            raise EdgekdError(f"loss {self.name!r}: fused_linear must be true, false or absent, got {fused_linear!r}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise EdgekdError(f"loss {self.name!r}: chunk_size must be a positive integer, got {chunk_size!r}")
        self.temperature, self.alpha, self.divergence, self.beta = float(temperature), float(alpha), divergence, float(beta)
        self.skew = float(skew)
        self.chunk_size, self.explicit = chunk_size, fused_linear is not None
        if fused_linear is None:
            fused_linear = setup.causal and heads_reproducible(setup.student_config) \
                and heads_reproducible(setup.teacher_config)
        self.fused_linear = fused_linear
        self.needs_logits, self.needs_last_hidden = not fused_linear, fused_linear

    def _kw(self) -> dict:
        return dict(temperature=self.temperature, alpha=self.alpha, divergence=self.divergence, beta=self.beta,
                    skew=self.skew, ignore_index=IGNORE_INDEX)

    def _teacher_logits(self, view: LossView):
        t = view.teacher("logits", self.name)
        return view.teacher_out.logits_at(self.temperature) if isinstance(view.teacher_out, TeacherMixture) else t

    def forward(self, view: LossView) -> torch.Tensor:
        # by default, whichever the outputs carry: hidden states and head (forward_for_loss), else logits
        if self.fused_linear and (self.explicit or get_field(view.student_out, "lm_head_weight") is not None):
            return self._from_hidden(view)
        s, t, labels = response_rows(view, view.student("logits", self.name), self._teacher_logits(view))
        if isinstance(t, TopKLogits):
            t = t.dense(s.shape[-1], s.dtype)
        return kernels.kd_loss(s, t.to(s.device), labels, **self._kw())

    def _from_hidden(self, view: LossView) -> torch.Tensor:
        sh = view.student("last_hidden_state", self.name)
        sw = view.student("lm_head_weight", self.name)
        V = sw.shape[0]
        teacher_out = view.teacher_out
        live = get_field(teacher_out, "lm_head_weight") is not None and not isinstance(teacher_out, TopKLogits)
        if live:
            th, tw = view.teacher("last_hidden_state", self.name), view.teacher("lm_head_weight", self.name)
            if tw.shape[0] != V:
                raise EdgekdError(f"teacher vocabulary ({tw.shape[0]}) differs from the student's ({V}): "
                                  f"teacher and student tokenizers must agree")
            t = th
        else:
            t = self._teacher_logits(view)
        # response_rows shifts and flattens rows; hidden states stand in for logits
        if live:
            sh, _, labels = response_rows(view, sh, None)
            t = response_rows(view, t, None)[0]
        else:
            sh, t, labels = response_rows(view, sh, t, vocab=V)
        sb = get_field(view.student_out, "lm_head_bias")
        kw = dict(student_bias=sb, chunk_size=self.chunk_size, **self._kw())
        if live:
            tb = get_field(teacher_out, "lm_head_bias")
            return kernels.fused_linear_kd_loss(sh, sw, t.to(sh.device), tw.detach().to(sh.device), labels,
                                                teacher_bias=None if tb is None else tb.detach().to(sh.device), **kw)
        if isinstance(t, TopKLogits):
            t.check_vocab(V)
            return kernels.fused_linear_kd_loss(sh, sw, labels=labels, teacher_logits=t.values.to(sh.device),
                                                teacher_indices=t.indices.to(sh.device), **kw)
        return kernels.fused_linear_kd_loss(sh, sw, labels=labels, teacher_logits=t.to(sh.device), **kw)


@register_loss("kd_fused_linear")
class FusedLinearKDLoss(KDLoss):
    """The "kd" loss with `fused_linear: true` (its name before that became the causal-LM default)."""

    def __init__(self, setup: Setup, temperature: float = DEFAULT_TEMPERATURE,
                 alpha: float = DEFAULT_ALPHA, divergence: str = DEFAULT_DIVERGENCE, beta: float = DEFAULT_BETA,
                 skew: float = DEFAULT_SKEW,
                 chunk_size: int | None = None):
        super().__init__(setup, temperature, alpha, divergence, beta, skew, fused_linear=True, chunk_size=chunk_size)


@register_loss("mse_logits")
class MSELogitsLoss(LossTerm):
    """α · mean_v (s − t)² + (1 − α) · CE per row, rows averaged (Kim et al., 2021).

    The temperature has no effect: T² · MSE(s/T, t/T) = MSE(s, t); it is accepted so one config
    can set T for every response loss. With a TopKLogits teacher the MSE runs over the kept entries.
    """

    takes_temperature = True
    needs_logits = True

    def __init__(self, setup: Setup, temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA):
        super().__init__()
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
