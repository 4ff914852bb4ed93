"""Skew KL and skew reverse KL (DistiLLM, Ko et al. 2024) in every implementation -- the fused CPU kernel,
the float64 reference, the fused-linear form, the CUDA device code (emulated on the host, and on a GPU
where there is one) -- against the definition written out here in float64, independently of
edgekd.kernels.reference: with p = softmax(t/T), q = softmax(s/T),
    skew_kl          T² KL(p ‖ λp + (1−λ)q)
    skew_reverse_kl  T² KL(q ‖ (1−λ)p + λq)
mixed with the hard-label CE by α; its gradient is autograd's through that definition."""

from __future__ import annotations

import pytest
import torch

from edgekd import kernels
from edgekd.kernels import fused_linear_kd_loss, kd_loss, kd_loss_reference

from ._kdtest import inputs, one_rounding_bound, rel_err
from .test_kd_cuda import _EMU_DT, HAS_CUDA, emu_lib  # noqa: F401  (emu_lib is a fixture)

SKEWS = ["skew_kl", "skew_reverse_kl"]
GRAD_TOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3}


def skew64(s, t, labels, grad_out=1.0, *, divergence, skew, temperature, alpha, reduction="batchmean",
           ignore_index=-100):
    """(loss, d loss/d s) in float64 from the definition; `grad_out` is the upstream gradient."""
    x = s.detach().double().requires_grad_(True)
    V = x.shape[-1]
    xs, ts = x.reshape(-1, V), t.detach().double().reshape(-1, V)
    p, q = torch.softmax(ts / temperature, -1), torch.softmax(xs / temperature, -1)
    if divergence == "skew_kl":
        m = skew * p + (1 - skew) * q
        d = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(-1)
    else:
        m = (1 - skew) * p + skew * q
        d = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(-1)
    row = alpha * temperature ** 2 * d
    counted = torch.ones(xs.shape[0], dtype=torch.bool)
    if labels is not None:
        lab = labels.reshape(-1).cpu()
        counted = lab != ignore_index
        ce = -torch.log_softmax(xs, -1).gather(1, lab.clamp(min=0)[:, None]).squeeze(1)
        row = torch.where(counted, row + (1 - alpha) * ce, torch.zeros_like(row))
    if reduction == "none":
        out = row.reshape(x.shape[:-1])
    elif reduction == "sum":
        out = row.sum()
    else:
        out = row.sum() / counted.sum().clamp(min=1)
    go = torch.as_tensor(grad_out, dtype=torch.float64)
    out.backward(go.expand(out.shape) if out.dim() else go)
    return out.detach(), x.grad


def impl_run(fn, s, t, labels, grad_out=1.0, **kw):
    """(loss, gradient) of an implementation, in float64 on the CPU."""
    x = s.detach().clone().requires_grad_(True)
    out = fn(x, t, labels, **kw)
    go = torch.as_tensor(grad_out, dtype=out.dtype, device=out.device)
    out.backward(go.expand(out.shape) if out.dim() else go)
    assert x.grad.dtype == x.dtype
    return out.detach().double().cpu(), x.grad.double().cpu()


def _masked(t, seed):
    """About 30% of the teacher's entries -inf, the student's favourite among them in row 0."""
    g = torch.Generator().manual_seed(seed)
    t = t.clone()
    t[torch.rand(t.shape, generator=g) < 0.3] = float("-inf")
    return t


def _check(fn, s, t, lab, grad_out=1.0, loss_tol=2e-5, **kw):
    ref_l, ref_g = skew64(s, t, lab, grad_out, **kw)
    out_l, out_g = impl_run(fn, s, t, lab, grad_out, **kw)
    assert torch.isfinite(out_l).all() and torch.isfinite(out_g).all()
    assert rel_err(out_l, ref_l) < loss_tol, (out_l, ref_l)
    assert rel_err(out_g, ref_g) < GRAD_TOL[s.dtype]


need_fused = pytest.mark.skipif(kernels.backend("cpu") != "fused-cpu", reason="extension not built")


@pytest.mark.parametrize("impl", [pytest.param(kd_loss, marks=need_fused, id="fused"),
                                  pytest.param(kd_loss_reference, id="reference")])
@pytest.mark.parametrize("divergence", SKEWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1.0, 2.5])
@pytest.mark.parametrize("skew,masked", [(0.1, False), (0.1, True), (0.5, True), (0.9, False)])
def test_matches_the_definition(impl, divergence, dtype, T, skew, masked):
    s, t, lab = inputs(13, 1271, dtype=dtype, seed=int(T * 10) + int(skew * 10))
    if masked:
        t = _masked(t, 1)
        t[0, s[0].float().argmax()] = float("-inf")
    _check(impl, s, t, lab, divergence=divergence, skew=skew, temperature=T, alpha=0.7)


@need_fused
@pytest.mark.parametrize("divergence", SKEWS)
@pytest.mark.parametrize("reduction,grad_out", [("batchmean", 0.37), ("sum", -2.5), ("none", "rows")])
def test_reductions_and_upstream_gradients(divergence, reduction, grad_out):
    s, t, lab = inputs(4 * 5, 1271, seed=11, ignore_frac=0.3)
    s, t, lab = s.view(4, 5, -1), t.view(4, 5, -1), lab.view(4, 5)
    if grad_out == "rows":
        grad_out = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    _check(kd_loss, s, t, lab, grad_out, divergence=divergence, skew=0.1, temperature=2.0, alpha=0.5,
           reduction=reduction)


@need_fused
@pytest.mark.parametrize("divergence", SKEWS)
def test_without_labels_and_every_row_ignored(divergence):
    s, t, _ = inputs(9, 300, seed=3, labels=False)
    _check(kd_loss, s, t, None, divergence=divergence, skew=0.2, temperature=1.0, alpha=1.0)
    lab = torch.full((9,), -100)
    loss, grad = impl_run(kd_loss, s, t, lab, divergence=divergence, skew=0.2, temperature=1.0, alpha=0.5)
    assert float(loss) == 0.0 and not grad.any()


@need_fused
@pytest.mark.parametrize("divergence", SKEWS)
def test_skew_one_is_no_divergence(divergence):
    """λ = 1 mixes the compared distribution into itself: KL(p‖p) or KL(q‖q), so only the CE is left."""
    s, t, lab = inputs(7, 500, seed=4)
    out_l, out_g = impl_run(kd_loss, s, t, lab, divergence=divergence, skew=1.0, temperature=2.0, alpha=0.6)
    ce_l, ce_g = impl_run(kd_loss, s, t, lab, temperature=2.0, alpha=0.0)
    assert abs(float(out_l) - 0.4 * float(ce_l)) < 1e-5 * float(ce_l)
    assert rel_err(out_g, 0.4 * ce_g) < 1e-5


@need_fused
def test_small_skews_approach_the_plain_divergences():
    """Small λ approaches forward KL (skew_kl) and the unmasked reverse KL (skew_reverse_kl)."""
    s, t, _ = inputs(6, 400, seed=5, labels=False, scale=1.0)
    kw = dict(temperature=1.0, alpha=1.0)
    fkl, rkl = float(kd_loss(s, t, **kw)), float(kd_loss(s, t, divergence="reverse_kl", **kw))
    skl = float(kd_loss(s, t, divergence="skew_kl", skew=1e-6, **kw))
    srkl = float(kd_loss(s, t, divergence="skew_reverse_kl", skew=1e-6, **kw))
    assert abs(skl - fkl) < 2e-3 * fkl and abs(srkl - rkl) < 2e-3 * rkl
    # the mixture bounds them: KL(p‖λp + (1−λ)q) ≤ (1−λ) KL(p‖q)
    assert float(kd_loss(s, t, divergence="skew_kl", skew=0.1, **kw)) <= 0.9 * fkl


@need_fused
@pytest.mark.parametrize("divergence", SKEWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear(divergence, dtype):
    g = torch.Generator().manual_seed(7)
    N, H, V = 11, 16, 300
    hs, ws = torch.randn(N, H, generator=g).to(dtype), (torch.randn(V, H, generator=g) * 0.5).to(dtype)
    ht, wt = torch.randn(N, H, generator=g).to(dtype), (torch.randn(V, H, generator=g) * 0.5).to(dtype)
    lab = torch.randint(0, V, (N,), generator=g)
    lab[3] = -100
    kw = dict(divergence=divergence, skew=0.1, temperature=2.0, alpha=0.5)
    h = hs.clone().requires_grad_(True)
    loss = fused_linear_kd_loss(h, ws, ht, wt, lab, chunk_size=4, **kw)
    loss.backward()
    s_logits = (hs.double() @ ws.double().t()).requires_grad_(True)
    ref_l, ref_gs = skew64(s_logits, ht.double() @ wt.double().t(), lab, **kw)
    # logits computed in `dtype` by the implementation: compare at the precision of that matmul
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    assert rel_err(loss.detach().double(), ref_l) < tol
    assert rel_err(h.grad.double(), ref_gs @ ws.double()) < tol


@need_fused
@pytest.mark.parametrize("divergence", SKEWS)
def test_neg_inf_student_logits(divergence):
    """A -inf student logit has q = 0: it gets a zero gradient, never NaN. Where the teacher masks it too it adds
    nothing (the definition over the other entries); where the teacher does not, the mixture keeps the loss
    finite (skew KL: p log(1/λ)), and the loss is the definition's."""
    s, t, lab = inputs(6, 300, seed=8)
    t = _masked(t, 4)
    g = torch.Generator().manual_seed(5)
    s_off = torch.rand(s.shape, generator=g) < 0.2
    s_off[:, :5] = False  # each row keeps finite logits
    both = s_off & ~torch.isfinite(t)
    lab = torch.where(s_off[torch.arange(6), lab], torch.full_like(lab, -100), lab)
    kw = dict(divergence=divergence, skew=0.1, temperature=1.5, alpha=0.8, reduction="none")
    ones = torch.ones(6, dtype=torch.float64)
    # -inf only where the teacher masks too: loss and gradient are those of the row without those entries
    s1 = s.masked_fill(both, float("-inf"))
    loss, grad = impl_run(kd_loss, s1, t, lab, ones, **kw)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all() and not grad[both].any()
    for r in range(6):
        keep = ~both[r]
        lr = lab[r:r + 1].clone()
        if lr.item() != -100:
            lr[0] = keep[:lr.item()].sum()  # the label's index among the kept entries
        ref_l, ref_g = skew64(s[r:r + 1, keep], t[r:r + 1, keep], lr, ones[:1], **kw)
        assert abs(float(loss[r]) - float(ref_l[0])) <= 2e-5 * abs(float(ref_l[0]))
        assert rel_err(grad[r, keep], ref_g[0]) < 2e-5
    # -inf also under a finite teacher: finite, the definition's loss, no gradient on the -inf entries
    s2 = s.masked_fill(s_off, float("-inf"))
    loss, grad = impl_run(kd_loss, s2, t, lab, ones, **kw)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all() and not grad[s_off].any()
    with torch.no_grad():
        p, q = torch.softmax(t.double() / 1.5, -1), torch.softmax(s2.double() / 1.5, -1)
        m = 0.1 * p + 0.9 * q if divergence == "skew_kl" else 0.9 * p + 0.1 * q
        x = p if divergence == "skew_kl" else q
        d = 0.8 * 1.5 ** 2 * (torch.xlogy(x, x) - torch.xlogy(x, m)).sum(-1)
        ce = -torch.log_softmax(s2.double(), -1).gather(1, lab.clamp(min=0)[:, None]).squeeze(1)
        want = torch.where(lab != -100, d + 0.2 * ce, torch.zeros_like(d))
    assert rel_err(loss, want) < 2e-5


@pytest.mark.parametrize("kwargs,msg", [(dict(skew=0.0), "skew"), (dict(skew=1.5), "skew"),
                                        (dict(skew=float("nan")), "skew")])
@pytest.mark.parametrize("divergence", SKEWS)
def test_bad_skew_names_the_argument(divergence, kwargs, msg):
    s, t, lab = inputs(3, 20)
    with pytest.raises(ValueError, match=msg):
        kd_loss(s, t, lab, divergence=divergence, **kwargs)


# --- the CUDA device code: emulated on the host, and on a GPU where there is one -------------------

@pytest.mark.parametrize("divergence", SKEWS)
@pytest.mark.parametrize("sd,td", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                   (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("masked,T,skew,V", [(False, 1.0, 0.1, 1271), (True, 2.5, 0.1, 3203),
                                             (True, 1.0, 0.6, 40)])
def test_emulated_cuda_kernel(emu_lib, divergence, sd, td, masked, T, skew, V):
    rows, alpha = 5, 0.7
    s, t, lab = inputs(rows, V, dtype=sd, tdtype=td, seed=V, ignore_frac=0.3)
    if masked:
        t = _masked(t, 2)
    loss = torch.full((rows,), float("nan"))
    grad = torch.full((rows, V), float("nan"), dtype=sd)
    rc = emu_lib(s.data_ptr(), _EMU_DT[sd], V, t.data_ptr(), _EMU_DT[td], V, lab.data_ptr(), rows, V, T, alpha,
                 {"skew_kl": 3, "skew_reverse_kl": 4}[divergence], skew, -100, 1.0, loss.data_ptr(),
                 grad.data_ptr(), V, 0, 2)
    assert rc == 0
    ref_l, ref_g = skew64(s, t, lab, torch.ones(rows, dtype=torch.float64), divergence=divergence, skew=skew,
                          temperature=T, alpha=alpha, reduction="none")
    assert rel_err(loss, ref_l) < 2e-5
    if sd == torch.float32:
        assert rel_err(grad.double(), ref_g) < 2e-5
    else:  # the gradient is computed in float32 and rounded to the student's dtype once
        assert bool(((grad.double() - ref_g).abs() <= one_rounding_bound(ref_g, sd) + 1e-3 * ref_g.abs().max()).all())


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("divergence", SKEWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_cuda_device(divergence, dtype, reduction):
    s, t, lab = inputs(64, 32003, dtype=dtype, seed=9)
    t = _masked(t, 3)
    assert kernels.backend("cuda") == "fused-cuda"
    kw = dict(divergence=divergence, skew=0.1, temperature=2.0, alpha=0.7, reduction=reduction)
    grad_out = torch.ones(64, dtype=torch.float64) if reduction == "none" else 1.0
    ref_l, ref_g = skew64(s, t, lab, grad_out, **kw)
    out_l, out_g = impl_run(kd_loss, s.cuda(), t.cuda(), lab.cuda(), grad_out, **kw)
    assert rel_err(out_l, ref_l) < 2e-5
    assert rel_err(out_g, ref_g) < GRAD_TOL[dtype]


@need_fused
@pytest.mark.parametrize("divergence", SKEWS)
def test_emulated_cuda_kernel_neg_inf_students_match_the_cpu_kernel(emu_lib, divergence):
    """-inf student logits under masked and unmasked teacher entries: the device code gives what the CPU
    kernel gives (which test_neg_inf_student_logits holds to the definition)."""
    rows, V = 5, 1271
    s, t, lab = inputs(rows, V, seed=12, ignore_frac=0.2)
    t = _masked(t, 6)
    off = torch.rand(s.shape, generator=torch.Generator().manual_seed(3)) < 0.2
    off[:, :5] = False
    s = s.masked_fill(off, float("-inf"))
    lab = torch.where(off[torch.arange(rows), lab], torch.full_like(lab, -100), lab)
    loss = torch.full((rows,), float("nan"))
    grad = torch.full((rows, V), float("nan"))
    rc = emu_lib(s.data_ptr(), 0, V, t.data_ptr(), 0, V, lab.data_ptr(), rows, V, 2.0, 0.6,
                 {"skew_kl": 3, "skew_reverse_kl": 4}[divergence], 0.1, -100, 1.0, loss.data_ptr(),
                 grad.data_ptr(), V, 0, 2)
    assert rc == 0
    want_l, want_g = impl_run(kd_loss, s, t, lab, torch.ones(rows), divergence=divergence, skew=0.1,
                              temperature=2.0, alpha=0.6, reduction="none")
    assert torch.isfinite(loss).all() and not grad[off].any()
    assert rel_err(loss, want_l) < 2e-5 and rel_err(grad.double(), want_g) < 2e-5
