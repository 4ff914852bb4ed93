"""The fused CUDA kernel against the float64 reference.

Two parts:
- GPU tests (skipped without a CUDA device): `kernels.kd_loss` on CUDA tensors, which dispatches to the
  fused CUDA kernel, against `kernels.kd_loss_reference` (float64) and against eager PyTorch in the
  inputs' own dtype -- every divergence and reduction, T, alpha, ignore_index, -inf teacher entries,
  strided rows, each dtype pair, rows x V > 2^31.
- Emulated-kernel tests (need only g++ with C++20): the same device code (csrc/cuda/kd_cuda_kernel.cuh)
  compiled for the host through csrc/cuda/emu/, each block's threads as OS threads, so its indexing,
  alignment paths, reductions and barriers are exercised on every machine, GPU or not.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from edgekd import kernels
from edgekd.kernels import kd_loss, kd_loss_reference
from edgekd.kernels.reference import kd_loss_reference64

from ._kdtest import check_against_reference, inputs, masked_rows, one_rounding_bound, rel_err, reverse_kl64, run

ROOT = Path(__file__).resolve().parents[2]
DIVS = ["forward_kl", "reverse_kl", "jsd"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HAS_CUDA = torch.cuda.is_available()


def cuda(fn):
    """GPU test: marked `cuda`, skipped without a device."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")(fn))


# --- helpers -------------------------------------------------------------------------------------

def cuda_inputs(rows, V, **kw):
    return inputs(rows, V, device="cuda", **kw)


# --- GPU tests -----------------------------------------------------------------------------------

@cuda
def test_backend_is_fused_cuda():
    assert kernels.backend("cuda") == "fused-cuda", "CUDA is present but the extension has no CUDA kernels"


@cuda
@pytest.mark.parametrize("V", [1271, 3200, 32003, 128256])
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_vocab_divergence_alpha(V, divergence, alpha):
    s, t, lab = cuda_inputs(17, V, seed=V)
    check_against_reference(s, t, lab, temperature=2.0, alpha=alpha, divergence=divergence)


@cuda
@pytest.mark.parametrize("T", [0.1, 0.5, 1.0, 2.0, 8.0])
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("V", [3200, 32003])
def test_temperatures(T, divergence, V):
    s, t, lab = cuda_inputs(33, V, seed=int(T * 10))
    check_against_reference(s, t, lab, temperature=T, alpha=0.3, divergence=divergence, beta=0.3)


@cuda
@pytest.mark.parametrize("rows", [1, 2, 7, 64, 1000, 4096])
@pytest.mark.parametrize("V", [1271, 32003])
def test_rows(rows, V):
    if rows * V > 40_000_000:
        rows = 40_000_000 // V
    s, t, lab = cuda_inputs(rows, V, seed=rows)
    check_against_reference(s, t, lab, temperature=2.0, alpha=0.5)


@cuda
@pytest.mark.parametrize("scale", [1e-3, 10.0, 1e2, 1e4])
@pytest.mark.parametrize("T", [0.1, 1.0, 8.0])
@pytest.mark.parametrize("divergence", DIVS)
def test_large_logits(scale, T, divergence):
    s, t, lab = cuda_inputs(9, 3203, scale=scale, seed=3)
    check_against_reference(s, t, lab, temperature=T, alpha=0.3, divergence=divergence)


@cuda
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("grad_out", [1.0, 0.37, -2.5])
@pytest.mark.parametrize("divergence", DIVS)
def test_reductions_and_grad_output(reduction, grad_out, divergence):
    s, t, lab = cuda_inputs(4 * 5, 1271, seed=11)
    s, t, lab = s.view(4, 5, -1), t.view(4, 5, -1), lab.view(4, 5)
    check_against_reference(s, t, lab, grad_out=grad_out, temperature=2.0, alpha=0.3, divergence=divergence, reduction=reduction)


@cuda
def test_per_row_grad_output_for_reduction_none():
    s, t, lab = cuda_inputs(12, 32003, seed=5)
    go = torch.linspace(-1, 2, 12, device="cuda")
    check_against_reference(s, t, lab, grad_out=go, temperature=2.0, alpha=0.3, reduction="none")


@cuda
@pytest.mark.parametrize("divergence", DIVS)
def test_no_labels(divergence):
    s, t, _ = cuda_inputs(12, 3200, labels=False)
    check_against_reference(s, t, None, temperature=2.0, alpha=0.5, divergence=divergence)
    check_against_reference(s, t, None, temperature=2.0, alpha=1.0, divergence=divergence, reduction="sum")


@cuda
def test_alpha_zero_without_labels_is_zero():
    s, t, _ = cuda_inputs(5, 1271, labels=False)
    out, grad = run(kd_loss, s, t, None, 1.0, temperature=2.0, alpha=0.0)
    assert float(out) == 0.0 and torch.all(grad == 0)


@cuda
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("V", [1271, 32003])
def test_every_row_ignored(reduction, V):
    s, t, _ = cuda_inputs(6, V)
    lab = torch.full((6,), -100, device="cuda")
    go = 1.0 if reduction != "none" else torch.ones(6, device="cuda")
    out, grad = run(kd_loss, s, t, lab, go, temperature=2.0, alpha=0.5, reduction=reduction)
    assert torch.all(out == 0) and torch.all(grad == 0)


@cuda
def test_custom_ignore_index_rows_get_zero_gradient():
    s, t, lab = cuda_inputs(10, 3203, ignore_frac=0.0)
    lab[[1, 4]] = 7
    out, grad = run(kd_loss, s, t, lab, 1.0, temperature=2.0, alpha=0.5, ignore_index=7)
    assert torch.all(grad[[1, 4]] == 0) and grad[0].abs().sum() > 0
    check_against_reference(s, t, lab, temperature=2.0, alpha=0.5, ignore_index=7)


@cuda
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [3200, 32003])
def test_neg_inf_teacher_entries(divergence, dtype, V):
    s, t, lab = cuda_inputs(16, V, dtype=dtype, seed=7)
    mask = torch.rand(16, V, generator=torch.Generator().manual_seed(1)) < 0.3
    mask[:, :40] = True           # a masked run at the start of each row (the online max starts at -inf)
    mask[3, :] = True
    mask[3, V // 2] = False       # one row with a single finite teacher entry
    t = t.masked_fill(mask.cuda(), float("-inf"))
    out, grad = run(kd_loss, s, t, lab, 1.0, temperature=2.0, alpha=0.5, divergence=divergence)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    check_against_reference(s, t, lab, temperature=2.0, alpha=0.5, divergence=divergence)


@cuda
@pytest.mark.parametrize("student_mask", [0.0, 0.2])
@pytest.mark.parametrize("V", [1271, 32003])
def test_reverse_kl_masks_against_independent_formula(student_mask, V):
    """A teacher mask masks the student too (renormalised over the teacher's support); -inf student
    logits add 0 (0 log 0): the float64 formula of _kdtest, not the reference module."""
    s, t = masked_rows(6, V, seed=V, student_mask=student_mask)
    ref_l, ref_g = reverse_kl64(s, t, 2.0)
    loss, grad = run(kd_loss, s.cuda(), t.cuda(), None, torch.ones(6, device="cuda"), divergence="reverse_kl",
                     temperature=2.0, reduction="none")
    assert (loss >= 0).all() and rel_err(loss.cpu(), ref_l) < 2e-5 and rel_err(grad.cpu(), ref_g) < 2e-5


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("divergence", DIVS)
def test_low_precision_gradient_rounds_once_with_reduction_none(dtype, divergence):
    s, t, lab = cuda_inputs(24, 32003, dtype=dtype, seed=21)
    go = torch.randn(24, generator=torch.Generator().manual_seed(2)).cuda() * 3
    kw = dict(temperature=2.0, alpha=0.7, divergence=divergence, reduction="none")
    _, ref_g = run(kd_loss_reference64, s.double(), t.double(), lab, go, **kw)
    _, grad = run(kd_loss, s, t, lab, go, **kw)
    assert ((grad - ref_g).abs() <= one_rounding_bound(ref_g, dtype)).all()


@cuda
@pytest.mark.parametrize("V", [1271, 32003])
def test_non_contiguous_inputs(V):
    base_s, base_t, lab = cuda_inputs(24, V + 5, seed=9)
    for off_s, off_t in [(0, 0), (1, 3), (2, 2), (5, 0)]:
        s, t = base_s[:, off_s:off_s + V], base_t[:, off_t:off_t + V]   # row stride V + 5, shifted starts
        assert not s.is_contiguous()
        check_against_reference(s, t, lab.clamp(max=V - 1), temperature=2.0, alpha=0.3)
    s3 = base_s.view(4, 6, -1)[:, ::2, 1:V + 1]
    t3 = base_t.view(4, 6, -1)[:, ::2, :V]
    check_against_reference(s3, t3, None, temperature=2.0, alpha=1.0, divergence="reverse_kl")
    s4 = base_s[:, :V].t().contiguous().t()  # column-major: copied by the API, same answer
    check_against_reference(s4, base_t[:, :V], lab.clamp(max=V - 1), temperature=2.0, alpha=0.3)


@cuda
@pytest.mark.parametrize("sdt,tdt", list(itertools.product(DTYPES, DTYPES)))
@pytest.mark.parametrize("divergence", DIVS)
def test_dtype_pairs(sdt, tdt, divergence):
    s, t, lab = cuda_inputs(19, 32003, dtype=sdt, tdtype=tdt, seed=13)
    check_against_reference(s, t, lab, grad_out=0.5, temperature=2.0, alpha=0.3, divergence=divergence)


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("V", [1271, 128256])
def test_low_precision_dtypes(dtype, divergence, V):
    s, t, lab = cuda_inputs(7, V, dtype=dtype, seed=13)
    check_against_reference(s, t, lab, grad_out=0.5, temperature=2.0, alpha=0.3, divergence=divergence)


@cuda
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_beta(beta):
    s, t, lab = cuda_inputs(8, 3200, seed=2)
    check_against_reference(s, t, lab, temperature=1.5, alpha=0.6, divergence="jsd", beta=beta)


@cuda
@pytest.mark.parametrize("divergence", DIVS)
def test_no_grad_forward_only(divergence):
    s, t, lab = cuda_inputs(64, 32003, seed=4)
    with torch.no_grad():
        out = kd_loss(s, t, lab, temperature=2.0, alpha=0.5, divergence=divergence, reduction="none")
    ref = kd_loss_reference(s, t, lab, temperature=2.0, alpha=0.5, divergence=divergence, reduction="none")
    assert rel_err(out, ref) < 2e-5


@cuda
def test_deterministic_and_matches_cpu_kernel():
    s, t, lab = cuda_inputs(300, 32003, seed=8)
    a_l, a_g = run(kd_loss, s, t, lab, 1.0, temperature=2.0, alpha=0.3, divergence="jsd")
    b_l, b_g = run(kd_loss, s, t, lab, 1.0, temperature=2.0, alpha=0.3, divergence="jsd")
    assert torch.equal(a_l, b_l) and torch.equal(a_g, b_g)  # no races: bit-identical reruns
    if kernels.backend("cpu") == "fused-cpu":
        c_l, c_g = run(kd_loss, s.cpu(), t.cpu(), lab.cpu(), 1.0, temperature=2.0, alpha=0.3, divergence="jsd")
        assert rel_err(a_l.cpu(), c_l) < 2e-5 and rel_err(a_g.cpu(), c_g) < 2e-5


@cuda
def test_side_stream():
    s, t, lab = cuda_inputs(256, 32003, seed=6)
    ref_l, ref_g = run(kd_loss_reference, s, t, lab, 1.0, temperature=2.0, alpha=0.3)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out_l, out_g = run(kd_loss, s, t, lab, 1.0, temperature=2.0, alpha=0.3)
    torch.cuda.current_stream().wait_stream(stream)
    assert rel_err(out_l, ref_l) < 2e-5 and rel_err(out_g, ref_g) < 2e-5


@cuda
@pytest.mark.slow
def test_int64_offsets_beyond_2_pow_31():
    """rows x V > 2^31 elements: a 32-bit offset would read and write the wrong rows at the end."""
    V = 32003
    rows = (2**31) // V + 3
    need = 3 * rows * V * 2 + (1 << 30)  # bf16 student, teacher, gradient, and slack
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory")
    g = torch.Generator().manual_seed(0)
    row_s, row_t = torch.randn(V, generator=g), torch.randn(V, generator=g)
    last_s, last_t = torch.randn(V, generator=g) * 2, torch.randn(V, generator=g)
    s = row_s.to(torch.bfloat16).cuda().expand(rows, V).contiguous()
    t = row_t.to(torch.bfloat16).cuda().expand(rows, V).contiguous()
    s[-1], t[-1] = last_s.to(torch.bfloat16).cuda(), last_t.to(torch.bfloat16).cuda()
    lab = torch.zeros(rows, dtype=torch.int64, device="cuda")
    lab[-1] = V - 1
    s.requires_grad_(True)
    out = kd_loss(s, t, lab, temperature=2.0, alpha=0.7, reduction="none")
    out.backward(torch.ones_like(out))
    kw = dict(temperature=2.0, alpha=0.7, reduction="none")
    for i in (0, rows // 2, rows - 1):
        x = s.detach()[i:i + 1].double().requires_grad_(True)
        ref = kd_loss_reference(x, t[i:i + 1], lab[i:i + 1], **kw)
        ref.double().sum().backward()
        assert abs(float(out[i]) - float(ref[0])) < 2e-5 * abs(float(ref[0])), i
        assert rel_err(s.grad[i].double(), x.grad[0]) < 8e-3, i
    del s, t, out


# --- the device code, emulated on the host -------------------------------------------------------

_EMU_DT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@pytest.fixture(scope="module")
def emu_lib(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler for the emulated kernel")
    if not (ROOT / "csrc/cuda/emu/kd_cuda_emu.cpp").exists():
        pytest.skip("the CUDA sources are not beside the tests (installed package)")
    out = tmp_path_factory.mktemp("kd_emu") / "kd_cuda_emu.so"
    cmd = [cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas",
           f"-I{ROOT / 'csrc'}", str(ROOT / "csrc/cuda/emu/kd_cuda_emu.cpp"), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    lib = ctypes.CDLL(str(out))
    f = lib.kd_forward_emu
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_int64, ctypes.c_size_t, ctypes.c_int, ctypes.c_int64,
                  ctypes.c_size_t, ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_float, ctypes.c_int,
                  ctypes.c_float, ctypes.c_int64, ctypes.c_float, ctypes.c_size_t, ctypes.c_size_t,
                  ctypes.c_int64, ctypes.c_size_t, ctypes.c_int]
    return f


def _emu_case(f, rows, V, sd=torch.float32, td=torch.float32, divergence="forward_kl", alpha=0.5, T=2.0,
              beta=0.5, labels=True, pad=0, off_s=0, off_t=0, neginf=0.0, grad=True, scale=3.0, grad_scale=1.0,
              seed=0, grid=3, ignore_frac=0.3, s_neginf=0.0, row_scale=False):
    g = torch.Generator().manual_seed(seed)
    width = V + pad + max(off_s, off_t)
    s = (torch.randn(rows, width, generator=g) * scale).to(sd)[:, off_s:off_s + V]
    t = (torch.randn(rows, width, generator=g) * scale).to(td)[:, off_t:off_t + V]
    if neginf:
        m = torch.rand(rows, V, generator=g) < neginf
        m[:, :37] = True
        t = t.masked_fill(m, float("-inf"))
        t[0, s[0].float().argmax()] = float("-inf")  # the student's largest logit masked by the teacher
    if s_neginf:  # -inf student logits, each row keeping one finite entry where the teacher is finite
        m = torch.rand(rows, V, generator=g) < s_neginf
        m[torch.arange(rows), torch.isfinite(t).float().argmax(1)] = False
        if divergence == "forward_kl":  # a -inf student logit under a finite teacher one is KL = +inf
            m &= ~torch.isfinite(t)
        s = s.masked_fill(m, float("-inf"))
    scales = torch.randn(rows, generator=g) if row_scale else None
    lab = None
    if labels:
        lab = torch.randint(0, V, (rows,), generator=g)
        lab[torch.rand(rows, generator=g) < ignore_frac] = -100
        if s_neginf:
            lab = torch.where(torch.isfinite(s[torch.arange(rows), lab].float()), lab, torch.full_like(lab, -100))
    loss = torch.full((rows,), float("nan"))
    gbuf = torch.full((rows, V), float("nan"), dtype=sd) if grad else None
    rc = f(s.data_ptr(), _EMU_DT[sd], s.stride(0), t.data_ptr(), _EMU_DT[td], t.stride(0),
           lab.data_ptr() if lab is not None else 0, rows, V, T, alpha, DIVS.index(divergence), beta, -100,
           grad_scale, loss.data_ptr(), gbuf.data_ptr() if grad else 0, gbuf.stride(0) if grad else 0,
           scales.data_ptr() if scales is not None else 0, grid)
    assert rc == 0
    x = s.double().requires_grad_(True)
    ref = kd_loss_reference(x, t, lab, temperature=T, alpha=alpha, divergence=divergence, beta=beta,
                            reduction="none")
    ref.double().backward(torch.ones(rows, dtype=torch.float64) if scales is None else scales.double())
    assert rel_err(loss, ref.detach()) < 2e-5
    if grad:
        assert not torch.isnan(gbuf).any(), "gradient entries left unwritten"
        assert rel_err(gbuf.double() / grad_scale, x.grad) < (2e-5 if sd == torch.float32 else 8e-3)
    return loss, gbuf


@pytest.mark.parametrize("V", [1271, 3200])
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_emulated_kernel_vocab_divergence_alpha(emu_lib, V, divergence, alpha):
    _emu_case(emu_lib, 4, V, divergence=divergence, alpha=alpha, seed=V)


@pytest.mark.parametrize("divergence", DIVS)
def test_emulated_kernel_512_threads(emu_lib, divergence):
    _emu_case(emu_lib, 3, 32003, divergence=divergence, alpha=0.3, seed=1, grid=2)


@pytest.mark.parametrize("T", [0.1, 0.5, 8.0])
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("scale", [3.0, 1e4])
def test_emulated_kernel_temperature_and_scale(emu_lib, T, divergence, scale):
    _emu_case(emu_lib, 3, 1271, divergence=divergence, T=T, scale=scale, alpha=0.3, beta=0.3)


@pytest.mark.parametrize("sd,td", list(itertools.product(DTYPES, DTYPES)))
@pytest.mark.parametrize("layout", [dict(), dict(pad=3, off_s=1, off_t=1), dict(pad=4, off_s=2, off_t=0)])
def test_emulated_kernel_dtypes_and_alignment(emu_lib, sd, td, layout):
    _emu_case(emu_lib, 5, 1271, sd=sd, td=td, **layout)


@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("case", [
    dict(V=3200, neginf=0.3), dict(V=3203, neginf=0.3, off_s=2, off_t=2, sd=torch.bfloat16, td=torch.bfloat16),
    dict(V=1271, grad=False), dict(V=1271, labels=False, grad_scale=0.25), dict(V=5), dict(V=3),
    dict(V=1271, ignore_frac=1.0, grid=2),
    dict(V=40000, rows=3, grid=2, off_s=3, off_t=3, pad=1, neginf=0.1, sd=torch.bfloat16, td=torch.float16),
    dict(V=1271, neginf=0.3, s_neginf=0.2), dict(V=3203, neginf=0.2, s_neginf=0.1, T=1.0, off_s=1, off_t=1, pad=2),
    dict(V=1271, row_scale=True, grad_scale=0.5), dict(V=3200, row_scale=True, sd=torch.bfloat16, neginf=0.2),
])
def test_emulated_kernel_edge_cases(emu_lib, divergence, case):
    case = dict(case)
    _emu_case(emu_lib, case.pop("rows", 7), case.pop("V"), divergence=divergence, **case)
