"""Objectives the trainer optimises: distillation via the losses registry, and the scratch baseline.

Until (or where) `edgekd.losses.build_loss` is unavailable, `ResponseKD` computes the response loss
through `kernels.kd_loss` with the same call shape, so the trainer never changes.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from edgekd import kernels
from edgekd.errors import EdgekdError


def shift_for_lm(student_logits, teacher_logits, labels):
    """Causal LM: position t predicts token t+1, so drop the last position and the first label."""
    return student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:]


def eager_kd_loss(s, t, labels, *, temperature, alpha, divergence="forward_kl", beta=0.5, ignore_index=-100):
    """The DESIGN.md loss in plain PyTorch autograd (float32): the benchmark's unfused comparison."""
    V = s.shape[-1]
    s = s.reshape(-1, V).float()
    t = t.reshape(-1, V).float()
    lab = labels.reshape(-1) if labels is not None else None
    ls = F.log_softmax(s / temperature, -1)
    lt = F.log_softmax(t / temperature, -1)
    if divergence == "forward_kl":
        d = (lt.exp() * (lt - ls)).sum(-1)
    elif divergence == "reverse_kl":
        d = (ls.exp() * (ls - lt)).sum(-1)
    else:
        p, q = lt.exp(), ls.exp()
        m = (beta * p + (1 - beta) * q).clamp_min(1e-30).log()
        d = beta * (p * (lt - m)).sum(-1) + (1 - beta) * (q * (ls - m)).sum(-1)
    d = d * temperature ** 2
    if lab is None:
        return (alpha * d).mean()
    keep = lab != ignore_index
    ce = F.cross_entropy(s, lab.clamp_min(0), reduction="none")
    row = alpha * d + (1 - alpha) * ce
    return (row * keep).sum() / keep.sum().clamp_min(1)


class ResponseKD(torch.nn.Module):
    """α·T²·KL(teacher‖student at T) + (1−α)·CE, through the fused kernel (or eager PyTorch)."""

    needs_hidden_states = False
    needs_attentions = False

    def __init__(self, temperature: float = 2.0, alpha: float = 0.5, divergence: str = "forward_kl",
                 beta: float = 0.5, impl: str = "fused", causal: bool = True):
        super().__init__()
        self.temperature, self.alpha, self.divergence, self.beta = temperature, alpha, divergence, beta
        self.impl, self.causal = impl, causal

    def forward(self, student_out, teacher_out, labels, attention_mask=None):
        s, t = student_out.logits, teacher_out.logits
        if self.causal and s.dim() == 3:
            s, t, labels = shift_for_lm(s, t, labels)
        kw = dict(temperature=self.temperature, alpha=self.alpha, divergence=self.divergence, beta=self.beta)
        if self.impl == "eager":
            loss = eager_kd_loss(s, t.detach(), labels, **kw)
        else:
            loss = kernels.kd_loss(s, t.detach(), labels, **kw)
        return loss, {"kd": loss.detach()}


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    if causal and logits.dim() == 3:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


def scratch_objective(model, causal: bool):
    """Hard-label cross-entropy only: the baseline distillation has to beat."""
    def objective(batch):
        out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        loss = ce_loss(out.logits, batch["labels"], causal)
        return loss, {"ce": loss.detach()}
    return objective


def build_response_loss(spec: Optional[list], student_config, teacher_config, *, temperature: float,
                        alpha: float, impl: str = "fused", causal: bool = True,
                        student_params: Optional[int] = None, teacher_params: Optional[int] = None):
    """The losses registry's loss (response terms get the run's T and alpha unless the spec sets them);
    the built-in `ResponseKD` when the registry is absent or the eager loss is asked for."""
    try:
        from edgekd.losses import build_loss
    except ImportError:
        build_loss = None
    if build_loss is not None and impl == "fused":
        if spec is None:
            spec = [{"name": "kd", "weight": 1.0, "temperature": temperature, "alpha": alpha}]
        else:
            filled = []
            for item in spec:
                item = {"name": item} if isinstance(item, str) else dict(item)
                if item.get("name") in ("kd", "mse_logits", "kd_fused_linear"):
                    item.setdefault("temperature", temperature)
                    item.setdefault("alpha", alpha)
                filled.append(item)
            spec = filled
        return build_loss(spec, student_config, teacher_config, causal=causal,
                          student_params=student_params, teacher_params=teacher_params)
    if spec:
        for item in spec:
            if item.get("name") not in ("kd", "response"):
                raise EdgekdError(f"unknown loss {item.get('name')!r}: without the losses registry only 'kd' is known")
        item = spec[0]
        return ResponseKD(item.get("temperature", temperature), item.get("alpha", alpha),
                          item.get("divergence", "forward_kl"), item.get("beta", 0.5), impl, causal)
    return ResponseKD(temperature, alpha, impl=impl, causal=causal)
