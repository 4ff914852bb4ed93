"""Shared helpers: run a loss forward+backward, and measure its error against the float64 oracle."""

import torch

from edgekd.kernels import kd_loss_reference
from edgekd.kernels.reference import kd_loss_reference64


def eager_loss(s, t, labels=None, **kw):
    """The reference formula computed in the inputs' own dtype: the error eager PyTorch makes there, the
    bar the fused kernels must meet. The oracle itself is kd_loss_reference (float64), independent of the
    C++/CUDA kernels; the one formula kept here, reverse_kl64, checks reverse KL's mask semantics in the
    reference and the kernels alike."""
    return kd_loss_reference64(s, t, labels, dtype=None, **kw)


def inputs(rows, V, dtype=torch.float32, tdtype=None, scale=3.0, seed=0, labels=True, ignore_frac=0.2,
           device="cpu"):
    """Student and teacher logits [rows, V] (the teacher in `tdtype`, default the student's) and labels with
    about `ignore_frac` of them ignored, drawn on the CPU (the same numbers on every device)."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(rows, V, generator=g) * scale).to(dtype)
    t = (torch.randn(rows, V, generator=g) * scale).to(tdtype or dtype)
    lab = None
    if labels:
        lab = torch.randint(0, V, (rows,), generator=g)
        lab[torch.rand(rows, generator=g) < ignore_frac] = -100
        lab = lab.to(device)
    return s.to(device), t.to(device), lab


def run(fn, s, t, labels, grad_out, **kw):
    """(loss, gradient) of fn, both float64, after backward with `grad_out` (a number or a tensor)."""
    s = s.detach().clone().requires_grad_(True)
    out = fn(s, t, labels, **kw)
    go = grad_out if torch.is_tensor(grad_out) else torch.as_tensor(grad_out, device=out.device)
    go = go.to(device=out.device, dtype=out.dtype)
    out.backward(go.expand(out.shape) if out.dim() else go)
    assert s.grad.dtype == s.dtype  # the gradient has the student's dtype
    return out.detach().double(), s.grad.double()


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    assert not torch.isnan(x).any(), "NaN in result"
    scale = ref.abs().max().clamp(min=1e-12)
    return float((x - ref).abs().max() / scale)


FLOORS = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (1e-5, 8e-3), torch.float16: (1e-5, 1e-3)}


def check_against_reference(s, t, labels=None, grad_out=1.0, floor=None, **kw):
    """Fused (on the inputs' device) vs float64 reference; the error must be no worse than eager
    PyTorch's in the same dtype."""
    from edgekd.kernels import kd_loss

    lf, gf = floor or FLOORS[s.dtype]
    if kw.get("reduction") == "none" and not torch.is_tensor(grad_out):
        grad_out = torch.full(s.shape[:-1], float(grad_out), device=s.device)
    ref_l, ref_g = run(kd_loss_reference, s, t, labels, grad_out, **kw)
    out_l, out_g = run(kd_loss, s, t, labels, grad_out, **kw)
    eag_l, eag_g = run(eager_loss, s, t, labels, grad_out, **kw)
    el, eg = rel_err(out_l, ref_l), rel_err(out_g, ref_g)
    eager_el = rel_err(eag_l, ref_l) if torch.isfinite(eag_l).all() else float("inf")
    eager_eg = rel_err(eag_g, ref_g) if torch.isfinite(eag_g).all() else float("inf")
    assert el <= max(lf, 2 * eager_el), f"loss error {el:.3g} (eager {eager_el:.3g}) loss={out_l} ref={ref_l}"
    assert eg <= max(gf, 2 * eager_eg), f"grad error {eg:.3g} (eager {eager_eg:.3g})"
    return el, eg


def reverse_kl64(s, t, T):
    """Reverse KL, written out here in float64 independently of the reference module: per row, the
    student's softmax at T renormalised over the teacher's support S = {t finite} (a teacher mask
    masks the student too), D = T² Σ_{q>0} q (log q − log p), and its gradient
    dD/ds_j = T q_j (log q_j − log p_j − D/T²) on q_j > 0, 0 elsewhere."""
    s, t = s.double(), t.double()
    loss, grad = torch.zeros(s.shape[0], dtype=torch.float64), torch.zeros_like(s)
    for r in range(s.shape[0]):
        on = torch.isfinite(t[r]) & torch.isfinite(s[r])
        a, b = t[r][torch.isfinite(t[r])] / T, s[r][on] / T
        log_p = t[r][on] / T - (a.max() + torch.log(torch.exp(a - a.max()).sum()))
        log_q = b - (b.max() + torch.log(torch.exp(b - b.max()).sum()))
        q = log_q.exp()
        d = float((q * (log_q - log_p)).sum())
        loss[r] = T * T * d
        grad[r, on] = T * q * (log_q - log_p - d)
    return loss, grad


def masked_rows(rows, V, seed, student_mask=0.0):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(rows, V, generator=g) * 3, torch.randn(rows, V, generator=g) * 3
    t[torch.rand(rows, V, generator=g) < 0.3] = float("-inf")
    t[0, s[0].argmax()] = float("-inf")  # the student's favourite token masked: its shift moves
    if student_mask:
        keep_one = torch.isfinite(t)  # leave each row at least one finite student logit on the support
        m = torch.rand(rows, V, generator=g) < student_mask
        m[torch.arange(rows), keep_one.float().argmax(1)] = False
        s[m] = float("-inf")
    return s, t


def one_rounding_bound(ref, dtype):
    """|x − ref| allowed for x = ref computed in float32 and rounded once to `dtype`."""
    eps = torch.finfo(dtype).eps
    tiny = 2.0 ** -25 if dtype == torch.float16 else 0.0  # half of float16's smallest subnormal step
    return 0.5 * eps * ref.abs() + 2e-5 * ref.abs().max() + tiny
