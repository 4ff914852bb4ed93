"""Plain PyTorch: the float64 oracle the fused kernels are tested against (and their fallback), and the
unfused eager loss the benchmarks and `loss_impl="eager"` measure them against."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgekd.hyperparams import DEFAULT_BETA, DEFAULT_DIVERGENCE, DEFAULT_SKEW, DEFAULT_TEMPERATURE, DIVERGENCES

# The divergences against a mixture of teacher p and student q, and the weight of p in it for mixture
# weight `mix` (β for jsd, the skew λ for the skew divergences; DistiLLM, Ko et al. 2024):
# jsd m = βp + (1−β)q; skew_kl KL(p‖λp + (1−λ)q); skew_reverse_kl KL(q‖(1−λ)p + λq).
MIXTURES = {"jsd": lambda mix: mix, "skew_kl": lambda mix: mix, "skew_reverse_kl": lambda mix: 1.0 - mix}
SKEWED = ("skew_kl", "skew_reverse_kl")
REDUCTIONS = ("batchmean", "sum", "none")


def check_args(student_logits, teacher_logits, labels, temperature, alpha, divergence, beta, reduction,
               skew=DEFAULT_SKEW):
    """Reject bad arguments with a ValueError that names the argument."""
    if not isinstance(student_logits, torch.Tensor) or not isinstance(teacher_logits, torch.Tensor):
        raise ValueError("student_logits and teacher_logits must be tensors")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits: shape {tuple(teacher_logits.shape)} does not match "
                         f"student_logits {tuple(student_logits.shape)}")
    if student_logits.dim() < 1 or student_logits.shape[-1] == 0:
        raise ValueError("student_logits: needs a non-empty last (vocabulary) dimension")
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise ValueError(f"{name}: dtype {t.dtype} is not one of float32, bfloat16, float16, float64")
    if student_logits.device != teacher_logits.device:
        raise ValueError(f"teacher_logits: on {teacher_logits.device}, student_logits on {student_logits.device}")
    if labels is not None:
        if labels.shape != student_logits.shape[:-1]:
            raise ValueError(f"labels: shape {tuple(labels.shape)} does not match the leading shape "
                             f"{tuple(student_logits.shape[:-1])} of the logits")
        if labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels: dtype {labels.dtype} must be int64 or int32")
    if not (temperature > 0) or temperature != temperature or temperature == float("inf"):
        raise ValueError(f"temperature: must be positive and finite, got {temperature}")
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha: must lie in [0, 1], got {alpha}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence: unknown {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if divergence == "jsd" and not (0.0 <= beta <= 1.0):
        raise ValueError(f"beta: must lie in [0, 1], got {beta}")
    if divergence in SKEWED and not (0.0 < skew <= 1.0):
        raise ValueError(f"skew: must lie in (0, 1], got {skew}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: unknown {reduction!r}; choose one of {', '.join(REDUCTIONS)}")


def _xlogy_ratio(a: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """a · (log a − log b), with 0 where a is 0 (so −inf entries contribute nothing, never NaN)."""
    keep = a > 0
    safe = torch.where(keep, log_a - torch.where(keep, log_b, torch.zeros_like(log_b)), torch.zeros_like(log_a))
    return torch.where(keep, a * safe, torch.zeros_like(a))


def mix_weight(divergence: str, beta: float, skew: float) -> float:
    """The one mixture coefficient the kernels take (their `beta` slot): β for jsd, λ for the skew divergences."""
    return skew if divergence in SKEWED else beta


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, w: float) -> torch.Tensor:
    """log(w·p + (1−w)·q) through logaddexp: m can underflow where p and q are tiny but not zero."""
    if w == 1.0:
        return log_p
    if w == 0.0:
        return log_q
    # Where p = q = 0 (an entry both models mask) m = 0; logaddexp(−inf, −inf) would give a NaN gradient.
    both = (log_p == float("-inf")) & (log_q == float("-inf"))
    zero = torch.zeros_like(log_p)
    return torch.where(both, log_p, torch.logaddexp(torch.where(both, zero, log_p + math.log(w)),
                                                    torch.where(both, zero, log_q + math.log1p(-w))))


def divergence_rows(s: torch.Tensor, t: torch.Tensor, temperature: float, divergence: str, beta: float) -> torch.Tensor:
    """Per-row T²-scaled divergence between softmax(t/T) and softmax(s/T); inputs already float64.
    `beta`: the mixture coefficient of jsd and the skew divergences (`mix_weight`)."""
    log_q = torch.log_softmax(s / temperature, dim=-1)
    log_p = torch.log_softmax(t / temperature, dim=-1)
    p, q = log_p.exp(), log_q.exp()
    if divergence == "forward_kl":
        d = _xlogy_ratio(p, log_p, log_q).sum(-1)
    elif divergence == "reverse_kl":
        # A teacher vocabulary mask (−inf) masks the student too: q is renormalised over the teacher's
        # support, so KL(q‖p) stays finite and ≥ 0 and no gradient moves mass onto a masked entry. Entries
        # where q is 0 (a −inf student logit) contribute 0 (0·log 0 = 0).
        masked = torch.where(t == float("-inf"), torch.full_like(s, float("-inf")), s)
        log_q = torch.log_softmax(masked / temperature, dim=-1)
        d = _xlogy_ratio(log_q.exp(), log_q, log_p).sum(-1)
    elif divergence in SKEWED:
        # Against a mixture that holds q (λ > 0): finite where p or q is 0, so no mask is needed.
        log_m = _log_mixture(log_p, log_q, MIXTURES[divergence](beta))
        d = _xlogy_ratio(p, log_p, log_m) if divergence == "skew_kl" else _xlogy_ratio(q, log_q, log_m)
        d = d.sum(-1)
    else:
        log_m = _log_mixture(log_p, log_q, beta)
        d = torch.zeros_like(p[..., 0])
        if beta > 0:  # terms with weight 0 are left out, not multiplied by 0 (0 · inf would be NaN)
            d = d + beta * _xlogy_ratio(p, log_p, log_m).sum(-1)
        if beta < 1:
            d = d + (1.0 - beta) * _xlogy_ratio(q, log_q, log_m).sum(-1)
    return d * (temperature * temperature)


def kd_loss_reference(student_logits, teacher_logits, labels=None, *, temperature=DEFAULT_TEMPERATURE, alpha=1.0,
                      divergence=DEFAULT_DIVERGENCE, beta=DEFAULT_BETA, ignore_index=-100, reduction="batchmean",
                      skew=DEFAULT_SKEW):
    """Same contract as kernels.kd_loss, computed in float64 with autograd; returns the loss in
    `loss_dtype` (float64 when either input is float64, else float32)."""
    return kd_loss_reference64(student_logits, teacher_logits, labels, temperature=temperature, alpha=alpha,
                               divergence=divergence, beta=beta, ignore_index=ignore_index,
                               reduction=reduction, skew=skew).to(loss_dtype(student_logits, teacher_logits))


def loss_dtype(student_logits, teacher_logits) -> torch.dtype:
    """The dtype of the loss kd_loss returns: float64 for float64 inputs, float32 for everything else."""
    wide = torch.float64 in (student_logits.dtype, teacher_logits.dtype)
    return torch.float64 if wide else torch.float32


def kd_loss_reference64(student_logits, teacher_logits, labels=None, *, temperature=DEFAULT_TEMPERATURE, alpha=1.0,
                        divergence=DEFAULT_DIVERGENCE, beta=DEFAULT_BETA, ignore_index=-100, reduction="batchmean",
                        dtype: torch.dtype | None = torch.float64, skew=DEFAULT_SKEW):
    """kd_loss_reference without the final cast: float64 end to end, for gradcheck. `dtype=None` runs the
    same formula in the inputs' own dtype: the error any in-dtype computation makes, which is the bar the
    kernel tests hold the fused kernels to."""
    check_args(student_logits, teacher_logits, labels, temperature, alpha, divergence, beta, reduction, skew)
    lead = student_logits.shape[:-1]
    V = student_logits.shape[-1]
    s = student_logits.reshape(-1, V)
    t = teacher_logits.detach().reshape(-1, V)
    if dtype is not None:
        s, t = s.to(dtype), t.to(dtype)
    mix = mix_weight(divergence, beta, skew)
    row = alpha * divergence_rows(s, t, temperature, divergence, mix) if alpha > 0 else s.new_zeros(s.shape[0])
    counted = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
    if labels is not None:
        lab = labels.reshape(-1).long()
        counted = lab != ignore_index
        if alpha < 1:
            safe = torch.where(counted, lab, torch.zeros_like(lab))
            ce = -torch.log_softmax(s, dim=-1).gather(1, safe[:, None]).squeeze(1)
            row = row + (1.0 - alpha) * ce
        row = torch.where(counted, row, torch.zeros_like(row))
    if reduction == "none":
        out = row.reshape(lead)
    elif reduction == "sum":
        out = row.sum()
    else:
        out = row.sum() / counted.sum().clamp(min=1)
    return out


def eager_kd_loss(s, t, labels, *, temperature, alpha, divergence=DEFAULT_DIVERGENCE, beta=DEFAULT_BETA,
                  ignore_index=-100, dtype: torch.dtype | None = torch.float32, skew=DEFAULT_SKEW):
    """The DESIGN.md loss as people write it in plain PyTorch autograd, in `dtype` (None: the inputs' own):
    the unfused baseline of the kernel benchmarks and of `loss_impl="eager"`. Unlike the reference it
    does not mask −inf teacher entries (they give NaN): the unfused loss as it is usually written."""
    V = s.shape[-1]
    s, t = s.reshape(-1, V), t.reshape(-1, V)
    if dtype is not None:
        s, t = s.to(dtype), t.to(dtype)
    ls = F.log_softmax(s / temperature, -1)
    lt = F.log_softmax(t / temperature, -1)
    if divergence == "forward_kl":  # F.kl_div, as people write it
        d = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    elif divergence == "reverse_kl":
        d = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
    else:
        p, q = lt.exp(), ls.exp()
        w = MIXTURES[divergence](mix_weight(divergence, beta, skew))
        m = (w * p + (1 - w) * q).clamp_min(1e-30).log()
        kl_p, kl_q = (p * (lt - m)).sum(-1), (q * (ls - m)).sum(-1)
        d = {"jsd": beta * kl_p + (1 - beta) * kl_q, "skew_kl": kl_p, "skew_reverse_kl": kl_q}[divergence]
    d = d * temperature ** 2
    if labels is None:
        return (alpha * d).mean()
    lab = labels.reshape(-1)
    keep = lab != ignore_index
    ce = F.cross_entropy(s, lab.clamp_min(0), reduction="none")
    row = alpha * d + (1 - alpha) * ce
    return (row * keep).sum() / keep.sum().clamp_min(1)
