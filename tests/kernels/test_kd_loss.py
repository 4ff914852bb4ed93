"""The fused CPU kernel against the float64 reference, across the cases DESIGN.md defines."""

import math
import os
import subprocess
import sys

import pytest
import torch

from edgekd import kernels
from edgekd.kernels import kd_loss, kd_loss_reference
from edgekd.kernels.reference import kd_loss_reference64

from ._kdtest import (check_against_reference, inputs, masked_rows, one_rounding_bound, rel_err, reverse_kl64,
                      run)

pytestmark = pytest.mark.skipif(kernels.backend("cpu") != "fused-cpu", reason="extension not built")

DIVS = ["forward_kl", "reverse_kl", "jsd"]


@pytest.mark.parametrize("V", [1271, 3200, 32003])
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_vocab_divergence_alpha(V, divergence, alpha):
    s, t, lab = inputs(17, V, seed=V)
    check_against_reference(s, t, lab, temperature=2.0, alpha=alpha, divergence=divergence)


@pytest.mark.parametrize("T", [0.1, 0.5, 1.0, 2.0, 8.0])
@pytest.mark.parametrize("divergence", DIVS)
def test_temperatures(T, divergence):
    s, t, lab = inputs(33, 3200, seed=int(T * 10))
    check_against_reference(s, t, lab, temperature=T, alpha=0.3, divergence=divergence, beta=0.3)


@pytest.mark.parametrize("rows", [1, 2, 7, 64, 3001])
def test_rows(rows):
    s, t, lab = inputs(rows, 1271, seed=rows)
    check_against_reference(s, t, lab, temperature=2.0, alpha=0.5)


@pytest.mark.parametrize("scale", [1e-3, 10.0, 1e2, 1e4])
@pytest.mark.parametrize("T", [0.1, 1.0, 8.0])
@pytest.mark.parametrize("divergence", DIVS)
def test_large_logits(scale, T, divergence):
    s, t, lab = inputs(9, 1271, scale=scale, seed=3)
    check_against_reference(s, t, lab, temperature=T, alpha=0.3, divergence=divergence)


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("grad_out", [1.0, 0.37, -2.5])
@pytest.mark.parametrize("divergence", DIVS)
def test_reductions_and_grad_output(reduction, grad_out, divergence):
    s, t, lab = inputs(4 * 5, 1271, seed=11)
    s, t, lab = s.view(4, 5, -1), t.view(4, 5, -1), lab.view(4, 5)
    check_against_reference(s, t, lab, grad_out=grad_out, temperature=2.0, alpha=0.3, divergence=divergence,
                            reduction=reduction)


def test_per_row_grad_output_for_reduction_none():
    s, t, lab = inputs(12, 1271, seed=5)
    go = torch.linspace(-1, 2, 12)
    check_against_reference(s, t, lab, grad_out=go, temperature=2.0, alpha=0.3, reduction="none")


def test_no_labels():
    s, t, _ = inputs(12, 3200, labels=False)
    for div in DIVS:
        check_against_reference(s, t, None, temperature=2.0, alpha=0.5, divergence=div)


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_every_row_ignored(reduction):
    s, t, _ = inputs(6, 1271)
    lab = torch.full((6,), -100)
    out, grad = run(kd_loss, s, t, lab, 1.0 if reduction != "none" else torch.ones(6), temperature=2.0,
                    alpha=0.5, reduction=reduction)
    assert torch.all(out == 0) and torch.all(grad == 0)


def test_custom_ignore_index_rows_get_zero_gradient():
    s, t, lab = inputs(10, 1271, ignore_frac=0.0)
    lab[[1, 4]] = 7  # ignore_index=7: those rows count for nothing
    out, grad = run(kd_loss, s, t, lab, 1.0, temperature=2.0, alpha=0.5, ignore_index=7)
    assert torch.all(grad[[1, 4]] == 0) and grad[0].abs().sum() > 0
    check_against_reference(s, t, lab, temperature=2.0, alpha=0.5, ignore_index=7)


@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_neg_inf_teacher_entries(divergence, dtype):
    s, t, lab = inputs(16, 3200, dtype=dtype, seed=7)
    mask = torch.rand(16, 3200, generator=torch.Generator().manual_seed(1)) < 0.3
    t = t.masked_fill(mask, float("-inf"))
    out, grad = run(kd_loss, s, t, lab, 1.0, temperature=2.0, alpha=0.5, divergence=divergence)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    check_against_reference(s, t, lab, temperature=2.0, alpha=0.5, divergence=divergence)


def test_non_contiguous_inputs():
    base_s, base_t, lab = inputs(24, 2 * 1271, seed=9)
    s = base_s[:, ::2]  # stride 2 along the vocabulary
    t = base_t.t().contiguous().t()[:, 1271:]  # column-major slice
    lab = lab.clamp(min=-100, max=1270)
    check_against_reference(s, t, lab, temperature=2.0, alpha=0.3)
    s3 = base_s.view(4, 6, -1)[:, ::2, :1271]  # strided rows, unit stride along V: no copy needed
    t3 = base_t.view(4, 6, -1)[:, ::2, :1271]
    check_against_reference(s3, t3, None, temperature=2.0, alpha=1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("V", [1271, 32003])
def test_low_precision_dtypes(dtype, divergence, V):
    s, t, lab = inputs(19, V, dtype=dtype, seed=13)
    check_against_reference(s, t, lab, grad_out=0.5, temperature=2.0, alpha=0.3, divergence=divergence)


def test_mixed_dtypes_and_output_dtypes():
    s, t, lab = inputs(8, 1271, dtype=torch.bfloat16)
    t = t.float()
    loss, grad = run(kd_loss, s, t, lab, 1.0, temperature=2.0, alpha=0.5)
    s_ = s.detach().clone().requires_grad_()
    out = kd_loss(s_, t, lab, temperature=2.0, alpha=0.5)
    out.backward()
    assert out.dtype == torch.float32 and s_.grad.dtype == torch.bfloat16
    check_against_reference(s, t, lab, temperature=2.0, alpha=0.5)


def test_teacher_gets_no_gradient_and_no_grad_mode_skips_it():
    s, t, lab = inputs(8, 1271)
    t.requires_grad_(True)
    s.requires_grad_(True)
    kd_loss(s, t, lab, temperature=2.0, alpha=0.5).backward()
    assert t.grad is None and s.grad is not None
    with torch.no_grad():
        v = kd_loss(s, t, lab, temperature=2.0, alpha=0.5)
    assert abs(float(v) - float(kd_loss_reference(s, t, lab, temperature=2.0, alpha=0.5))) < 1e-4


def test_gradcheck_reference_in_double():
    for div in DIVS:
        s = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
        t = torch.randn(3, 7, dtype=torch.float64)
        t[0, 2] = float("-inf")
        with torch.no_grad():  # a vocabulary entry both models mask; for reverse KL and JSD a student-only one
            t[2, 5], s[2, 5] = float("-inf"), float("-inf")
            if div != "forward_kl":
                s[1, 0] = float("-inf")
        lab = torch.tensor([1, -100, 4])
        f = lambda x: kd_loss_reference64(x, t, lab, temperature=1.7, alpha=0.3, divergence=div, beta=0.4)
        assert torch.autograd.gradcheck(f, (s,))


def test_gradcheck_fused_in_float32_tiny():
    """The kernel computes in float32, so finite differences run in float32 with matching tolerances."""
    for div in DIVS:
        s = torch.randn(3, 7, dtype=torch.float32, requires_grad=True)
        t = torch.randn(3, 7)
        lab = torch.tensor([1, -100, 4])
        f = lambda x: kd_loss(x, t, lab, temperature=1.7, alpha=0.3, divergence=div, beta=0.4, reduction="sum")
        assert torch.autograd.gradcheck(f, (s,), eps=1e-2, atol=5e-3, rtol=5e-3, fast_mode=False)


def test_scalar_path_matches_simd_path():
    """The portable path (forced by EDGEKD_CPU_ISA=scalar) computes the same thing as the SIMD one."""
    code = (
        "import torch, sys; from edgekd import kernels, _C;"
        "g=torch.Generator().manual_seed(0);"
        "s=torch.randn(5,1271,generator=g)*3; t=torch.randn(5,1271,generator=g)*3;"
        "t[0,:10]=float('-inf'); lab=torch.tensor([1,2,-100,4,5]);"
        "out=[]\n"
        "for d in ['forward_kl','reverse_kl','jsd']:\n"
        "  for dt in [torch.float32, torch.bfloat16, torch.float16]:\n"
        "    x=s.to(dt).detach().clone().requires_grad_(); l=kernels.kd_loss(x,t.to(dt),lab,temperature=2.0,alpha=0.3,divergence=d);"
        " l.backward(); out += [l.detach().reshape(1), x.grad.float().reshape(-1)]\n"
        "torch.save({'isa': _C.cpu_isa(), 'v': torch.cat(out)}, sys.argv[1])"
    )
    res = {}
    for isa in ("scalar", "auto"):
        path = f"/tmp/edgekd_isa_{isa}_{os.getpid()}.pt"
        env = dict(os.environ, EDGEKD_CPU_ISA=isa)
        subprocess.run([sys.executable, "-c", code, path], check=True, env=env)
        res[isa] = torch.load(path, weights_only=True)
        os.unlink(path)
    assert res["scalar"]["isa"] == "scalar"
    assert rel_err(res["auto"]["v"], res["scalar"]["v"]) < 1e-5


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_equals_unfused(reduction, dtype):
    g = torch.Generator().manual_seed(0)
    N, Hs, Ht, V = 50, 24, 40, 1271
    hs = torch.randn(N, Hs, generator=g).to(dtype).requires_grad_()
    ws = (torch.randn(V, Hs, generator=g) * 0.3).to(dtype).requires_grad_()
    bs = (torch.randn(V, generator=g) * 0.1).to(dtype).requires_grad_()
    ht, wt = torch.randn(N, Ht, generator=g).to(dtype), (torch.randn(V, Ht, generator=g) * 0.3).to(dtype)
    lab = torch.randint(0, V, (N,), generator=g)
    lab[::7] = -100
    go = torch.linspace(0.5, 1.5, N) if reduction == "none" else torch.tensor(0.7)
    kw = dict(temperature=2.0, alpha=0.3, reduction=reduction)
    out = kernels.fused_linear_kd_loss(hs, ws, ht, wt, lab, student_bias=bs, chunk_size=16, **kw)
    out.backward(go)
    got = [x.grad.clone() for x in (hs, ws, bs)]
    for x in (hs, ws, bs):
        x.grad = None
    ref = kd_loss(torch.nn.functional.linear(hs, ws, bs), torch.nn.functional.linear(ht, wt), lab, **kw)
    ref.backward(go)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert rel_err(out.detach(), ref.detach()) < tol
    for a, x in zip(got, (hs, ws, bs)):
        assert a.dtype == x.dtype
        assert rel_err(a, x.grad) < tol


@pytest.mark.parametrize("form", ["logits", "topk"])
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_fused_linear_with_teacher_logits_or_topk(form, divergence):
    """A teacher given as logits or as its top-k (what an offline cache holds): the same loss and gradients as
    the float64 reference over the student's full logits and the teacher's dense logits (−inf off the top-k)."""
    g = torch.Generator().manual_seed(3)
    N, H, V, k = 37, 16, 503, 9
    hs = torch.randn(N, H, generator=g, requires_grad=True)
    ws = (torch.randn(V, H, generator=g) * 0.3).requires_grad_()
    tl = torch.randn(N, V, generator=g) * 2
    lab = torch.randint(0, V, (N,), generator=g)
    lab[::5] = -100
    kw = dict(temperature=2.0, alpha=0.6, divergence=divergence)
    if form == "logits":
        out = kernels.fused_linear_kd_loss(hs, ws, labels=lab, teacher_logits=tl, chunk_size=8, **kw)
        dense = tl.double()
    else:
        vals, idx = tl.topk(k, dim=-1)
        out = kernels.fused_linear_kd_loss(hs, ws, labels=lab, teacher_logits=vals, teacher_indices=idx,
                                           chunk_size=8, **kw)
        dense = torch.full((N, V), float("-inf"), dtype=torch.float64)
        for r in range(N):
            for j in range(k):
                dense[r, idx[r, j]] = float(vals[r, j])
    out.backward()
    h64, w64 = hs.detach().double().requires_grad_(), ws.detach().double().requires_grad_()
    ref = kd_loss_reference64(h64 @ w64.t(), dense, lab, **kw)
    ref.backward()
    assert abs(float(out) - float(ref)) < 1e-5 * max(1.0, abs(float(ref)))
    assert rel_err(hs.grad, h64.grad) < 1e-4 and rel_err(ws.grad, w64.grad) < 1e-4


def test_fused_linear_under_bf16_autocast():
    """Under torch.autocast(bfloat16) the heads run in bfloat16 (as F.linear would), float32 parameters get
    float32 gradients, and the loss is the reference's over the bf16 logits."""
    g = torch.Generator().manual_seed(4)
    N, H, V = 40, 32, 700
    hs = torch.randn(N, H, generator=g, requires_grad=True)
    ws = (torch.randn(V, H, generator=g) * 0.2).requires_grad_()
    ht, wt = torch.randn(N, 24, generator=g), torch.randn(V, 24, generator=g) * 0.2
    lab = torch.randint(0, V, (N,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernels.fused_linear_kd_loss(hs, ws, ht, wt, lab, temperature=1.0, alpha=0.7)
        s_ref = torch.nn.functional.linear(hs, ws)
        t_ref = torch.nn.functional.linear(ht, wt)
    assert s_ref.dtype == torch.bfloat16
    out.backward()
    assert hs.grad.dtype == torch.float32 and ws.grad.dtype == torch.float32
    h2, w2 = hs.detach().clone().requires_grad_(), ws.detach().clone().requires_grad_()
    ref = kd_loss_reference64(torch.nn.functional.linear(h2.bfloat16(), w2.bfloat16()).double(), t_ref.double(),
                              lab, temperature=1.0, alpha=0.7)
    ref.backward()
    assert abs(float(out) - float(ref)) < 1e-2 * max(1.0, abs(float(ref)))
    assert rel_err(hs.grad, h2.grad) < 3e-2 and rel_err(ws.grad, w2.grad) < 3e-2


def test_fused_linear_teacher_forms_are_exclusive():
    with pytest.raises(ValueError, match="teacher"):
        kernels.fused_linear_kd_loss(torch.randn(4, 8), torch.randn(50, 8), torch.randn(4, 8), torch.randn(50, 8),
                                     teacher_logits=torch.randn(4, 50))
    with pytest.raises(ValueError, match="teacher_indices"):
        kernels.fused_linear_kd_loss(torch.randn(4, 8), torch.randn(50, 8), teacher_logits=torch.randn(4, 3),
                                     teacher_indices=torch.tensor([[0, 1, 50]] * 4))


def test_fused_linear_default_chunk_and_no_bias():
    g = torch.Generator().manual_seed(1)
    hs = torch.randn(2, 3, 16, generator=g, requires_grad=True)
    ws = torch.randn(300, 16, generator=g, requires_grad=True)
    ht, wt = torch.randn(2, 3, 8, generator=g), torch.randn(300, 8, generator=g)
    out = kernels.fused_linear_kd_loss(hs, ws, ht, wt, temperature=2.0)
    out.backward()
    ref = kd_loss_reference(hs @ ws.t(), ht @ wt.t(), temperature=2.0)
    assert abs(float(out) - float(ref)) < 1e-5 * max(1.0, abs(float(ref)))
    assert hs.grad is not None and ws.grad is not None


@pytest.mark.parametrize("kwargs,name", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(alpha=1.5), "alpha"), (dict(alpha=-0.1), "alpha"), (dict(divergence="kl"), "divergence"),
    (dict(reduction="mean"), "reduction"), (dict(divergence="jsd", beta=2.0), "beta"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    s, t, lab = inputs(4, 50)
    with pytest.raises(ValueError, match=name):
        kd_loss(s, t, lab, **kwargs)
    with pytest.raises(ValueError, match=name):
        kernels.fused_linear_kd_loss(torch.randn(4, 8), torch.randn(50, 8), torch.randn(4, 8),
                                     torch.randn(50, 8), lab, **kwargs)


def test_bad_shapes_and_labels():
    s, t, lab = inputs(4, 50)
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(s, t[:, :49], lab)
    with pytest.raises(ValueError, match="labels"):
        kd_loss(s, t, lab[:3])
    with pytest.raises(ValueError, match="labels"):
        kd_loss(s, t, torch.tensor([0, 1, 2, 50]))
    with pytest.raises(ValueError, match="teacher_weight"):
        kernels.fused_linear_kd_loss(torch.randn(4, 8), torch.randn(50, 8), torch.randn(4, 8), torch.randn(49, 8))


def test_backend_names():
    assert kernels.backend("cpu") == "fused-cpu"
    assert kernels.backend("cuda") in ("fused-cuda", "reference")


def test_torch_compile_sees_through_the_op():
    s, t, lab = inputs(16, 1271)
    f = torch.compile(lambda a, b, c: kd_loss(a, b, c, temperature=2.0, alpha=0.5), backend="aot_eager",
                      fullgraph=False)
    out_c, grad_c = run(lambda a, b, c: f(a, b, c), s, t, lab, 1.0)
    out_r, grad_r = run(kd_loss_reference, s, t, lab, 1.0, temperature=2.0, alpha=0.5)
    assert rel_err(out_c, out_r) < 1e-5 and rel_err(grad_c, grad_r) < 1e-5


def test_torch_export_captures_the_op():
    class M(torch.nn.Module):
        def forward(self, s, t):
            return kd_loss(s, t, temperature=2.0, alpha=1.0)

    s, t, _ = inputs(8, 300, labels=False)
    ep = torch.export.export(M(), (s, t))
    assert any("edgekd" in str(n.target) for n in ep.graph.nodes)
    assert abs(float(ep.module()(s, t)) - float(kd_loss_reference(s, t, temperature=2.0))) < 1e-5


@pytest.mark.slow
def test_int64_offsets_beyond_2_pow_31():
    """rows × vocab > 2³¹: a 32-bit offset would read the wrong row at the end."""
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    V = 32003
    rows = (2**31) // V + 3
    if avail < 14 * 2**30:
        pytest.skip("needs ~10 GB of free memory")
    g = torch.Generator().manual_seed(0)
    row_s, row_t = torch.randn(V, generator=g), torch.randn(V, generator=g)
    s = row_s.to(torch.bfloat16).expand(rows, V).contiguous()
    t = row_t.to(torch.bfloat16).expand(rows, V).contiguous()
    last_s, last_t = (torch.randn(V, generator=g) * 2).to(torch.bfloat16), torch.randn(V, generator=g).to(torch.bfloat16)
    s[-1], t[-1] = last_s, last_t
    with torch.no_grad():
        out = kd_loss(s, t, temperature=2.0, reduction="none")
    ref_first = kd_loss_reference(s[:1], t[:1], temperature=2.0, reduction="none")
    ref_last = kd_loss_reference(last_s[None], last_t[None], temperature=2.0, reduction="none")
    assert abs(float(out[0]) - float(ref_first[0])) < 1e-4 * abs(float(ref_first[0]))
    assert abs(float(out[-1]) - float(ref_last[0])) < 1e-4 * abs(float(ref_last[0]))


def test_backward_twice_with_retained_graph():
    s, t, lab = inputs(8, 1271)
    s.requires_grad_(True)
    loss = kd_loss(s, t, lab, temperature=2.0, alpha=0.5)
    (g1,) = torch.autograd.grad(loss, s, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, s, grad_outputs=torch.tensor(2.0))
    assert rel_err(g2, 2 * g1) < 1e-6


def test_gradient_buffer_is_the_only_rows_by_vocab_allocation():
    """Autograd adopts the kernel's buffer as .grad (no copy, no zero-filled grad for the second output)."""
    from edgekd.kernels.bench import PeakMemory

    s, t, lab = inputs(256, 32000)
    s.requires_grad_(True)
    kd_loss(s, t, lab, temperature=2.0, alpha=0.5).backward()  # warm-up
    s.grad = None
    with PeakMemory(torch.device("cpu")) as mem:
        kd_loss(s, t, lab, temperature=2.0, alpha=0.5).backward()
    if mem.extra_bytes is None:
        pytest.skip("no /proc/self/clear_refs here")
    grad_bytes = s.numel() * 4
    assert mem.extra_bytes < grad_bytes + 8 * 2**20, mem.extra_bytes / 2**20


def test_bench_prints_table_and_writes_json(tmp_path):
    """A small run of `edgekd kernel bench`: every variant ran, the JSON holds the ratios."""
    import json

    from typer.testing import CliRunner

    from edgekd.cli import app

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["kernel", "bench", "--rows", "64", "--vocab", "3000", "--dtype", "float32",
                                   "--repeats", "2", "--no-compile", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "fused" in res.output and "eager" in res.output
    data = json.loads(out.read_text())
    (case,) = data["cases"]
    fused = [r for r in case["results"] if r["variant"] == "fused"][0]
    eager = [r for r in case["results"] if r["variant"] == "eager"][0]
    assert fused["floor_ratio"] > 0 and fused["speedup_vs_eager"] > 0
    assert abs(fused["loss"] - eager["loss"]) < 1e-4 * abs(eager["loss"])


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_edge_betas_with_masked_teacher(beta):
    s, t, lab = inputs(6, 300, seed=2)
    t[:, ::5] = float("-inf")
    ref = kd_loss_reference(s, t, lab, temperature=2.0, alpha=0.5, divergence="jsd", beta=beta)
    assert torch.isfinite(ref)
    check_against_reference(s, t, lab, temperature=2.0, alpha=0.5, divergence="jsd", beta=beta)


# --- reverse KL with vocabulary masks, one rounding in low precision, float64 (issue 12, item 3) ----

@pytest.mark.parametrize("impl", [kd_loss, kd_loss_reference], ids=["fused", "reference"])
def test_reverse_kl_teacher_mask_masks_the_student(impl):
    """The issue's case: a teacher mask used to give a negative loss and push the student onto the
    masked token. Now the student is renormalised over the teacher's support: loss 0, gradient 0."""
    s, t = torch.zeros(1, 3), torch.tensor([[0.0, 0.0, float("-inf")]])
    loss, grad = run(impl, s, t, None, 1.0, divergence="reverse_kl")
    assert float(loss) == 0.0 and torch.all(grad == 0)
    x = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.SGD([x], lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        out = impl(x, t + torch.tensor([[0.5, -0.5, 0.0]]), divergence="reverse_kl", temperature=2.0)
        assert float(out.detach()) >= -1e-6
        out.backward()
        assert float(x.grad[0, 2]) == 0.0  # nothing ever moves the masked token
        opt.step()
    assert float(x[0, 2]) == 0.0 and float(torch.softmax(x.detach(), -1)[0, 2]) < 0.34


@pytest.mark.parametrize("impl", [kd_loss, kd_loss_reference], ids=["fused", "reference"])
def test_reverse_kl_masked_student_is_finite(impl):
    """A −inf student logit against a finite teacher: 0·log 0 = 0, not NaN (KL([½,½,0] ‖ ⅓) = log 1.5)."""
    s, t = torch.tensor([[0.0, 0.0, float("-inf")]]), torch.zeros(1, 3)
    loss, grad = run(impl, s, t, None, 1.0, divergence="reverse_kl")
    assert abs(float(loss) - math.log(1.5)) < 1e-6 and torch.all(grad == 0)
    s2 = torch.tensor([[0.3, -0.2, float("-inf"), 1.0]])
    t2 = torch.tensor([[0.1, 0.4, 2.0, -1.0]])
    ref_l, ref_g = reverse_kl64(s2, t2, 1.0)
    loss, grad = run(impl, s2, t2, None, 1.0, divergence="reverse_kl", reduction="sum")
    assert abs(float(loss) - float(ref_l.sum())) < 1e-6 and rel_err(grad, ref_g) < 1e-5


@pytest.mark.parametrize("impl", [kd_loss, kd_loss_reference], ids=["fused", "reference"])
@pytest.mark.parametrize("T", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("student_mask", [0.0, 0.2])
@pytest.mark.parametrize("V", [37, 1271])
def test_reverse_kl_masks_against_independent_formula(impl, T, student_mask, V):
    s, t = masked_rows(6, V, seed=V + int(10 * T), student_mask=student_mask)
    ref_l, ref_g = reverse_kl64(s, t, T)
    loss, grad = run(impl, s, t, None, torch.ones(6), divergence="reverse_kl", temperature=T, reduction="none")
    assert (loss >= 0).all() and torch.isfinite(grad).all()
    assert rel_err(loss, ref_l) < 2e-5 and rel_err(grad, ref_g) < 2e-5


def test_reverse_kl_masks_with_hard_labels_and_low_precision():
    """CE keeps the student's full softmax (at T = 1, where the kernel otherwise shares the exponentials)."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for T in (1.0, 2.0, 0.5):
            s, t = masked_rows(9, 1271, seed=3, student_mask=0.1)
            lab = torch.randint(0, 1271, (9,), generator=torch.Generator().manual_seed(4))
            lab = torch.where(torch.isfinite(s[torch.arange(9), lab]), lab, torch.full_like(lab, -100))
            check_against_reference(s.to(dtype), t.to(dtype), lab, temperature=T, alpha=0.4, divergence="reverse_kl")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("divergence", DIVS)
def test_low_precision_gradient_rounds_once_with_reduction_none(dtype, divergence):
    """A per-row upstream gradient is applied in float32 before the one rounding to bf16/fp16 (scaling
    the rounded buffer rounded twice: up to several times one rounding)."""
    s, t, lab = inputs(24, 3200, dtype=dtype, seed=21)
    go = torch.randn(24, generator=torch.Generator().manual_seed(2)) * 3
    kw = dict(temperature=2.0, alpha=0.7, divergence=divergence, reduction="none")
    _, ref_g = run(kd_loss_reference64, s.double(), t.double(), lab, go, **kw)
    _, grad = run(kd_loss, s, t, lab, go, **kw)
    assert ((grad - ref_g).abs() <= one_rounding_bound(ref_g, dtype)).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gradient_rounds_once_with_scaled_loss(dtype):
    """`(loss * c).backward()` (gradient accumulation, loss scaling) rounds once too (c = 0.7: the old
    in-place scaling failed this in both dtypes)."""
    s, t, lab = inputs(16, 3200, dtype=dtype, seed=22)
    kw = dict(temperature=2.0, alpha=0.5)
    _, ref_g = run(kd_loss_reference64, s.double(), t.double(), lab, 0.7, **kw)
    _, grad = run(kd_loss, s, t, lab, 0.7, **kw)
    assert ((grad - ref_g).abs() <= one_rounding_bound(ref_g, dtype)).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_linear_low_precision_per_row_upstream(dtype):
    """fused_linear_kd_loss with reduction="none": the per-row factor goes into the kernel (bf16: before its
    rounding); the heads' gradients match the float64 reference through both matmuls."""
    g = torch.Generator().manual_seed(3)
    N, H, V = 40, 16, 300
    hs = torch.randn(N, H, generator=g).to(dtype).requires_grad_()
    ws = (torch.randn(V, H, generator=g) * 0.5).to(dtype).requires_grad_()
    ht, wt = torch.randn(N, H, generator=g).to(dtype), (torch.randn(V, H, generator=g) * 0.5).to(dtype)
    go = torch.randn(N, generator=g)
    out = kernels.fused_linear_kd_loss(hs, ws, ht, wt, temperature=2.0, reduction="none", chunk_size=16)
    out.backward(go)
    h64, w64 = hs.detach().double().requires_grad_(), ws.detach().double().requires_grad_()
    ref = kd_loss_reference64(h64 @ w64.t(), ht.double() @ wt.double().t(), temperature=2.0, reduction="none")
    ref.backward(go.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert rel_err(hs.grad, h64.grad) < tol and rel_err(ws.grad, w64.grad) < tol


def test_float64_inputs_give_float64_loss_and_gradients():
    s, t, lab = inputs(10, 300, dtype=torch.float64, seed=4)
    for div in DIVS:
        kw = dict(temperature=1.5, alpha=0.4, divergence=div)
        x = s.clone().requires_grad_()
        out = kd_loss(x, t, lab, **kw)
        out.backward()
        assert out.dtype == torch.float64 and x.grad.dtype == torch.float64
        y = s.clone().requires_grad_()
        ref = kd_loss_reference64(y, t, lab, **kw)
        ref.backward()
        assert float(abs(out - ref)) <= 1e-12 * float(abs(ref)) and rel_err(x.grad, y.grad) < 1e-12
    g = torch.Generator().manual_seed(5)
    hs = torch.randn(6, 8, dtype=torch.float64, generator=g, requires_grad=True)
    ws = torch.randn(300, 8, dtype=torch.float64, generator=g, requires_grad=True)
    out = kernels.fused_linear_kd_loss(hs, ws, torch.randn(6, 8, dtype=torch.float64, generator=g),
                                       torch.randn(300, 8, dtype=torch.float64, generator=g), temperature=2.0)
    out.backward()
    assert out.dtype == torch.float64 and hs.grad.dtype == torch.float64 and ws.grad.dtype == torch.float64
