"""Shared helpers: run a loss forward+backward, and measure its error against the float64 oracle."""

import torch

from edgekd.kernels import kd_loss_reference
from edgekd.kernels.reference import kd_loss_reference64


def eager_loss(s, t, labels=None, **kw):
    """The reference formula computed in the inputs' own dtype: the error eager PyTorch makes there, the
    bar the fused kernels must meet. The oracle itself is kd_loss_reference (float64), independent of the
    C++/CUDA kernels; no test keeps a formula of its own."""
    return kd_loss_reference64(s, t, labels, dtype=None, **kw)


def run(fn, s, t, labels, grad_out, **kw):
    s = s.detach().clone().requires_grad_(True)
    out = fn(s, t, labels, **kw)
    out.backward(grad_out if out.dim() else torch.as_tensor(grad_out, dtype=out.dtype))
    return out.detach().double(), s.grad.double()


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    assert not torch.isnan(x).any(), "NaN in result"
    scale = ref.abs().max().clamp(min=1e-12)
    return float((x - ref).abs().max() / scale)


def check_against_reference(s, t, labels=None, grad_out=1.0, floor=None, **kw):
    """Fused vs float64 reference; the error must be no worse than eager PyTorch's in the same dtype."""
    from edgekd.kernels import kd_loss

    floors = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (1e-5, 8e-3), torch.float16: (1e-5, 1e-3)}
    lf, gf = floor or floors[s.dtype]
    go = grad_out
    if kw.get("reduction") == "none" and not torch.is_tensor(grad_out):
        go = torch.full(s.shape[:-1], float(grad_out))
    ref_l, ref_g = run(kd_loss_reference, s, t, labels, go, **kw)
    out_l, out_g = run(kd_loss, s, t, labels, go, **kw)
    eag_l, eag_g = run(eager_loss, s, t, labels, go.to(s.dtype) if torch.is_tensor(go) else go, **kw)
    el, eg = rel_err(out_l, ref_l), rel_err(out_g, ref_g)
    eager_el = rel_err(eag_l, ref_l) if not torch.isnan(eag_l).any() else float("inf")
    eager_eg = rel_err(eag_g, ref_g) if not torch.isnan(eag_g).any() else float("inf")
    assert el <= max(lf, 2 * eager_el), f"loss error {el:.3g} (eager {eager_el:.3g}) loss={out_l} ref={ref_l}"
    assert eg <= max(gf, 2 * eager_eg), f"grad error {eg:.3g} (eager {eager_eg:.3g})"
    assert out_g.dtype == torch.float64  # (converted above) the gradient had the student's dtype
    return el, eg
