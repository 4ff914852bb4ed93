"""The fused ops under torch's tracing tools: torch.library.opcheck (schema, fake tensors, autograd
registration, AOT dispatch static and dynamic), torch.compile with a backward, torch.func.grad."""

import pytest
import torch

from edgekd import kernels
from edgekd.kernels import fused_linear_kd_loss, kd_loss, kd_loss_reference
from edgekd.kernels.reference import kd_loss_reference64

from ._kdtest import inputs, rel_err, run

pytestmark = pytest.mark.skipif(kernels.backend("cpu") != "fused-cpu", reason="extension not built")

KD = dict(temperature=2.0, alpha=0.5)  # kd_rows' float arguments after the tensors: T, alpha, div, beta, ii


def _kd_rows_samples():
    s, t, lab = inputs(6, 37, seed=1)
    yield (s.requires_grad_(), t, lab, 2.0, 0.5, 0, 0.5, -100, 1.0, True)
    s, t, _ = inputs(5, 40, seed=2, labels=False)
    t[:, :3] = float("-inf")
    yield (s.requires_grad_(), t, None, 1.0, 1.0, 1, 0.5, -100, 1.0, True)  # reverse KL, masked teacher
    s, t, lab = inputs(4, 33, seed=3, dtype=torch.bfloat16)
    yield (s.requires_grad_(), t, lab, 1.5, 0.3, 2, 0.4, -100, 1.0, True)
    s, t, lab = inputs(4, 33, seed=4)
    yield (s, t, lab, 2.0, 0.5, 0, 0.5, -100, 0.25, False)  # no gradient asked for
    s, t, lab = inputs(5, 40, seed=6)
    t[:, :3] = float("-inf")
    yield (s.requires_grad_(), t, lab, 2.0, 0.7, 3, 0.1, -100, 1.0, True)  # skew KL (λ in the beta slot)
    s, t, lab = inputs(4, 33, seed=7, dtype=torch.bfloat16)
    yield (s.requires_grad_(), t, lab, 1.0, 0.5, 4, 0.1, -100, 1.0, True)  # skew reverse KL


@pytest.mark.parametrize("i", range(6))
def test_opcheck_kd_rows(i):
    args = list(_kd_rows_samples())[i]
    torch.library.opcheck(torch.ops.edgekd.kd_rows.default, args)


def _linear_samples():
    g = torch.Generator().manual_seed(0)
    N, H, Ht, V = 9, 8, 6, 50
    hs, ws = torch.randn(N, H, generator=g), torch.randn(V, H, generator=g) * 0.5
    bs = torch.randn(V, generator=g) * 0.1
    ht, wt = torch.randn(N, Ht, generator=g), torch.randn(V, Ht, generator=g) * 0.5
    lab = torch.randint(0, V, (N,), generator=g)
    lab[2] = -100
    yield (hs.clone().requires_grad_(), ws.clone().requires_grad_(), bs.clone().requires_grad_(), ht, wt, None,
           None, lab, 2.0, 0.5, 0, 0.5, -100, 1.0, 4, True)
    yield (hs.clone().requires_grad_(), ws.clone().requires_grad_(), None, ht, wt, None, None, None, 1.0, 1.0, 1,
           0.5, -100, 1.0, 3, True)
    yield (hs, ws, None, ht, wt, None, None, lab, 2.0, 0.5, 2, 0.5, -100, 0.5, 4, False)
    # the teacher as logits, and as its top-k
    tl = torch.randn(N, V, generator=g)
    yield (hs.clone().requires_grad_(), ws.clone().requires_grad_(), None, tl, None, None, None, lab, 2.0, 0.5, 0,
           0.5, -100, 1.0, 4, True)
    vals, idx = tl.topk(7, dim=-1)
    yield (hs.clone().requires_grad_(), ws.clone().requires_grad_(), bs.clone().requires_grad_(), vals, None, None,
           idx, lab, 1.0, 0.7, 0, 0.5, -100, 1.0, 4, True)


@pytest.mark.parametrize("i", range(5))
def test_opcheck_linear_kd_rows(i):
    args = list(_linear_samples())[i]
    torch.library.opcheck(torch.ops.edgekd.linear_kd_rows.default, args)


def test_opcheck_backward_ops():
    """The in-place ops backward is made of: their schema (mutated buffers declared) and fake parts."""
    s, t, lab = inputs(6, 37, seed=5, dtype=torch.bfloat16)
    grad = torch.empty_like(s)
    go = torch.rand(6) + 0.5
    torch.library.opcheck(torch.ops.edgekd.kd_rows_rescale_.default,
                          (grad, s, t, lab, go, 2.0, 0.5, 0, 0.5, -100, 1.0, True))
    g = torch.Generator().manual_seed(1)
    hs, ws, ht, wt = (torch.randn(5, 8, generator=g), torch.randn(40, 8, generator=g), torch.randn(5, 8, generator=g),
                      torch.randn(40, 8, generator=g))
    bufs = (torch.empty_like(hs), torch.empty_like(ws), ws.new_empty(0))
    torch.library.opcheck(torch.ops.edgekd.linear_kd_rescale_.default,
                          (*bufs, hs, ws, None, ht, wt, None, None, None, torch.randn(5, generator=g), 2.0, 1.0, 1, 0.5,
                           -100, 1.0, 2, True))


def _kd_case(reduction, divergence, dtype=torch.float32):
    s, t, lab = inputs(12, 301, seed=7, dtype=dtype)
    t[:, :5] = float("-inf")
    go = torch.randn(12) if reduction == "none" else torch.tensor(0.7)
    kw = dict(temperature=2.0, alpha=0.4, divergence=divergence, reduction=reduction)
    return s, t, lab, go, kw


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("reduction,divergence", [("batchmean", "forward_kl"), ("none", "reverse_kl"),
                                                  ("sum", "jsd")])
def test_compile_kd_loss_with_backward(backend, reduction, divergence):
    s, t, lab, go, kw = _kd_case(reduction, divergence)
    torch._dynamo.reset()
    f = torch.compile(lambda a, b, c: kd_loss(a, b, c, **kw), backend=backend, fullgraph=True)
    out_c, grad_c = run(lambda a, b, c: f(a, b, c), s, t, lab, go)
    out_e, grad_e = run(kd_loss, s, t, lab, go, **kw)
    out_r, grad_r = run(kd_loss_reference64, s.double(), t.double(), lab, go.double(), **kw)
    assert rel_err(out_c, out_e) < 1e-6 and rel_err(grad_c, grad_e) < 1e-6
    assert rel_err(out_c, out_r) < 2e-5 and rel_err(grad_c, grad_r) < 2e-5


def _linear_case(dtype=torch.float32):
    g = torch.Generator().manual_seed(8)
    N, H, V = 20, 12, 257
    hs, ws = torch.randn(N, H, generator=g).to(dtype), (torch.randn(V, H, generator=g) * 0.4).to(dtype)
    bs = (torch.randn(V, generator=g) * 0.1).to(dtype)
    ht, wt = torch.randn(N, H, generator=g).to(dtype), (torch.randn(V, H, generator=g) * 0.4).to(dtype)
    lab = torch.randint(0, V, (N,), generator=g)
    lab[::5] = -100
    return hs, ws, bs, ht, wt, lab


def _linear_grads(fn, hs, ws, bs, go):
    leaves = [x.detach().clone().requires_grad_() for x in (hs, ws, bs)]
    out = fn(*leaves)
    out.backward(go)
    return out.detach(), [x.grad for x in leaves]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_compile_fused_linear_with_backward(backend, reduction):
    hs, ws, bs, ht, wt, lab = _linear_case()
    go = torch.randn(hs.shape[0]) if reduction == "none" else torch.tensor(1.3)
    kw = dict(temperature=2.0, alpha=0.4, divergence="reverse_kl", reduction=reduction, chunk_size=8)

    def fn(h, w, b):
        return fused_linear_kd_loss(h, w, ht, wt, lab, student_bias=b, **kw)

    torch._dynamo.reset()
    out_c, g_c = _linear_grads(torch.compile(fn, backend=backend, fullgraph=True), hs, ws, bs, go)
    out_e, g_e = _linear_grads(fn, hs, ws, bs, go)
    assert rel_err(out_c, out_e) < 1e-6
    for a, b in zip(g_c, g_e):
        assert rel_err(a, b) < 1e-5


def test_func_grad_both_ops():
    s, t, lab, _, kw = _kd_case("batchmean", "reverse_kl")
    g = torch.func.grad(lambda x: kd_loss(x, t, lab, **kw))(s)
    _, ref = run(kd_loss_reference64, s.double(), t.double(), lab, 1.0, **kw)
    assert rel_err(g, ref) < 2e-5
    hs, ws, bs, ht, wt, lab = _linear_case()
    kw = dict(temperature=2.0, alpha=0.4)
    gh, gw = torch.func.grad(lambda h, w: fused_linear_kd_loss(h, w, ht, wt, lab, **kw), argnums=(0, 1))(hs, ws)
    h64, w64 = hs.double().requires_grad_(), ws.double().requires_grad_()
    kd_loss_reference64(h64 @ w64.t(), ht.double() @ wt.double().t(), lab, **kw).backward()
    assert rel_err(gh, h64.grad) < 2e-5 and rel_err(gw, w64.grad) < 2e-5


def test_ops_own_backward_for_direct_callers():
    """Called directly, the ops' registered backward gives the gradient for any upstream (the buffers
    they return stay as they were)."""
    s, t, lab = inputs(8, 301, seed=9, dtype=torch.bfloat16)
    x = s.clone().requires_grad_()
    loss, buf = torch.ops.edgekd.kd_rows(x, t, lab, 2.0, 0.4, 1, 0.5, -100, 0.5, True)
    kept = buf.clone()
    go = torch.randn(8)
    loss.backward(go)
    assert torch.equal(buf, kept)
    y = s.double().requires_grad_()
    kd_loss_reference64(y, t.double(), lab, temperature=2.0, alpha=0.4, divergence="reverse_kl",
                        reduction="none").backward(go.double())
    assert rel_err(x.grad, y.grad) < 8e-3
    hs, ws, bs, ht, wt, lab = _linear_case()
    h, w = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    loss, gh, gw, _ = torch.ops.edgekd.linear_kd_rows(h, w, None, ht, wt, None, None, lab, 2.0, 0.4, 0, 0.5, -100, 0.25,
                                                      8, True)
    loss.backward(go.repeat(3)[:h.shape[0]])
    h64, w64 = hs.double().requires_grad_(), ws.double().requires_grad_()
    kd_loss_reference64(h64 @ w64.t(), ht.double() @ wt.double().t(), lab, temperature=2.0, alpha=0.4,
                        reduction="none").backward(go.repeat(3)[:h.shape[0]].double())
    assert rel_err(h.grad, h64.grad) < 2e-5 and rel_err(w.grad, w64.grad) < 2e-5


def test_fused_linear_backward_twice_with_retained_graph():
    hs, ws, bs, ht, wt, lab = _linear_case()
    h = hs.clone().requires_grad_()
    loss = fused_linear_kd_loss(h, ws, ht, wt, lab, temperature=2.0, alpha=0.4, chunk_size=8)
    (g1,) = torch.autograd.grad(loss, h, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, h, grad_outputs=torch.tensor(2.0))
    assert rel_err(g2, 2 * g1) < 1e-6
