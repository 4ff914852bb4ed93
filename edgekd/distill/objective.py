"""Objectives the trainer optimises, each `(model, batch) -> (mean loss, {part: value})`: distillation
through the losses registry and a scheme's teacher, and hard labels alone (the baselines).

The trainer passes the model it trains (DDP-wrapped where distributed), so an objective never holds one.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from edgekd.errors import EdgekdError
from edgekd.hyperparams import DEFAULT_BETA, DEFAULT_DIVERGENCE, DEFAULT_SKEW


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    if causal and logits.dim() == 3:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


def hard_label_objective(causal: bool):
    """Hard-label cross-entropy only: what a baseline (or the built-in teacher) trains on."""
    def objective(model, batch):
        from edgekd.losses.outputs import model_inputs

        out = model(**model_inputs(batch))
        loss = ce_loss(out.logits, batch["labels"], causal)
        return loss, {"ce": loss.detach()}
    return objective


class DistillObjective:
    """The student's forward (producing what the loss reads), the scheme's teacher outputs, the loss;
    the hard-label CE is logged beside the loss's own parts."""

    def __init__(self, loss_fn, scheme, causal: bool):
        self.loss_fn, self.scheme, self.causal = loss_fn, scheme, causal

    def __call__(self, model, batch):
        from edgekd.losses import forward_for_loss

        s_out = forward_for_loss(model, batch, self.loss_fn)
        with torch.no_grad():
            t_out = self.scheme.teacher_outputs(batch, s_out)
        total, parts = self.loss_fn(s_out, t_out, batch["labels"], attention_mask=batch.get("attention_mask"))
        parts = dict(parts or {})
        if getattr(s_out, "logits", None) is not None:
            parts["ce"] = ce_loss(s_out.logits.detach(), batch["labels"], self.causal)
        return total, parts


class EagerKD(torch.nn.Module):
    """α·T²·KL + (1−α)·CE in plain PyTorch (`loss_impl="eager"`): the trainer benchmark's unfused loss."""

    takes_temperature = True  # a response loss, like the registry's (on_policy sets its α on the student's samples)

    def __init__(self, temperature: float, alpha: float, divergence: str = DEFAULT_DIVERGENCE,
                 beta: float = DEFAULT_BETA, causal: bool = True, skew: float = DEFAULT_SKEW):
        super().__init__()
        self.temperature, self.alpha, self.divergence, self.beta, self.causal = temperature, alpha, divergence, beta, causal
        self.skew = skew

    def forward(self, student_out, teacher_out, labels, attention_mask=None):
        s, t = student_out.logits, teacher_out.logits
        if self.causal and s.dim() == 3:
            s, t, labels = s[:, :-1], t[:, :-1], labels[:, 1:]
        from edgekd.kernels.reference import eager_kd_loss

        loss = eager_kd_loss(s, t.detach(), labels, temperature=self.temperature, alpha=self.alpha,
                             divergence=self.divergence, beta=self.beta, skew=self.skew)
        return loss, {"kd": loss.detach()}


def build_response_loss(spec: Optional[list], student_config, teacher_config, *, temperature: float,
                        alpha: float, impl: str = "fused", causal: bool = True,
                        student_params: Optional[int] = None, teacher_params: Optional[int] = None):
    """The losses registry's loss for `spec` (its response terms get the run's T and α unless the spec
    sets them); `impl="eager"`: the plain-PyTorch KD loss (one 'kd' term only)."""
    from edgekd.losses import build_loss, takes_run_temperature

    items = [{"name": i} if isinstance(i, str) else dict(i) for i in (spec or [{"name": "kd", "weight": 1.0}])]
    for item in items:
        if takes_run_temperature(item.get("name")):
            item.setdefault("temperature", temperature)
            item.setdefault("alpha", alpha)
    if impl == "eager":
        if len(items) != 1 or items[0].get("name") != "kd":
            raise EdgekdError("loss_impl 'eager' computes the 'kd' loss alone: drop --loss or use the fused loss")
        it = items[0]
        return EagerKD(it["temperature"], it["alpha"], it.get("divergence", DEFAULT_DIVERGENCE),
                       it.get("beta", DEFAULT_BETA), causal, it.get("skew", DEFAULT_SKEW))
    return build_loss(items, student_config, teacher_config, causal=causal,
                      student_params=student_params, teacher_params=teacher_params)
