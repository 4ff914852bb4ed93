"""Declares the fused kernels to torch (torch.library custom ops with fake and autograd parts).

The forward op returns the per-row loss and, when the student needs a gradient, that gradient
already scaled for the reduction, written by the same kernel call. Backward is then a no-op when
the upstream gradient is what the kernel assumed (the usual `loss.backward()`), or one in-place
scaling pass otherwise. Nothing of size rows × vocab is allocated besides that gradient.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from edgekd.kernels.reference import check_args, kd_loss_reference

try:
    from edgekd import _C
except ImportError:  # built without the extension: everything runs on the reference
    _C = None

_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_DIVERGENCES = {"forward_kl": 0, "reverse_kl": 1, "jsd": 2}


def backend(device_type: str = "cpu") -> str:
    """Which implementation `kd_loss` uses on this device type: "fused-cpu", "fused-cuda" or "reference"."""
    if _C is None or os.environ.get("EDGEKD_KERNEL") == "reference":
        return "reference"
    if device_type == "cpu":
        return "fused-cpu"
    if device_type == "cuda" and getattr(_C, "has_cuda", False):
        return "fused-cuda"
    return "reference"


def _as_rows(x: Tensor) -> Tensor:
    """[..., V] -> [rows, V] with a unit stride along V (copies only when it must)."""
    x = x.reshape(-1, x.shape[-1])
    if x.stride(-1) != 1 or (x.shape[0] > 1 and x.stride(0) < x.shape[1]):
        x = x.contiguous()
    return x


def _launch(student: Tensor, teacher: Tensor, labels: Optional[Tensor], temperature: float, alpha: float,
            divergence: int, beta: float, ignore_index: int, grad_scale: float, loss: Tensor,
            grad: Optional[Tensor], row_scale: Optional[Tensor] = None) -> None:
    """One kernel call: loss[r] and grad[r] = grad_scale · row_scale[r] · d loss[r]/d student[r] (float32
    factors, one rounding to the student's dtype)."""
    rows, V = student.shape
    if rows == 0:
        return
    if row_scale is not None:
        row_scale = row_scale.to(device=student.device, dtype=torch.float32).contiguous()
    args = (student.data_ptr(), _DTYPES[student.dtype], student.stride(0),
            teacher.data_ptr(), _DTYPES[teacher.dtype], teacher.stride(0),
            labels.data_ptr() if labels is not None else 0, rows, V,
            temperature, alpha, divergence, beta, ignore_index, grad_scale,
            loss.data_ptr(), grad.data_ptr() if grad is not None else 0, grad.stride(0) if grad is not None else 0,
            row_scale.data_ptr() if row_scale is not None else 0)
    if student.device.type == "cuda":
        with torch.cuda.device(student.device):
            _C.kd_forward_cuda(*args, torch.cuda.current_stream().cuda_stream)
    else:
        _C.kd_forward_cpu(*args, torch.get_num_threads())


_HUGE_MIN_BYTES = 8 << 20


def _new_grad_buffer(like: Tensor) -> Tensor:
    """An uninitialised gradient buffer; on CPU backed by huge pages where the OS allows it."""
    buf = torch.empty(like.shape, dtype=like.dtype, device=like.device)
    nbytes = buf.numel() * buf.element_size()
    if buf.device.type == "cpu" and nbytes >= _HUGE_MIN_BYTES:
        _C.advise_hugepages(buf.data_ptr(), nbytes)
    return buf


@torch.library.custom_op("edgekd::kd_rows", mutates_args=())
def kd_rows(student: Tensor, teacher: Tensor, labels: Optional[Tensor], temperature: float, alpha: float,
            divergence: int, beta: float, ignore_index: int, grad_scale: float,
            compute_grad: bool) -> tuple[Tensor, Tensor]:
    """Per-row KD(+CE) loss [rows] (float32) and grad_scale · d(row loss)/d(student) [rows, V] (or empty)."""
    rows = student.shape[0]
    loss = torch.empty(rows, dtype=torch.float32, device=student.device)
    grad = _new_grad_buffer(student) if compute_grad else student.new_empty(0)
    _launch(student, teacher, labels, temperature, alpha, divergence, beta, ignore_index, grad_scale, loss,
            grad if compute_grad else None)
    return loss, grad


@kd_rows.register_fake
def _kd_rows_fake(student, teacher, labels, temperature, alpha, divergence, beta, ignore_index, grad_scale,
                  compute_grad):
    loss = student.new_empty(student.shape[0], dtype=torch.float32)
    grad = student.new_empty(student.shape) if compute_grad else student.new_empty(0)
    return loss, grad


def _kd_rows_setup(ctx, inputs, output):
    ctx.grad_scale = inputs[8]
    ctx.set_materialize_grads(False)  # else autograd fills a zero rows × vocab grad for the second output
    # Held as a plain (detached) attribute, not saved: backward hands the buffer itself to autograd,
    # which can then adopt it as .grad instead of copying rows × vocab (saved tensors pin it).
    ctx.kernel_grad = output[1].detach()
    # The inputs are kept (no copies) so a second backward through a retained graph can recompute.
    ctx.args = inputs[3:9]
    ctx.save_for_backward(*inputs[:3])


def _row_scale(grad_loss: Tensor, grad_scale: float) -> Optional[Tensor]:
    """The per-row factor still to apply to the kernel's gradient; None when it is exactly 1 (eager only)."""
    scale = grad_loss / grad_scale
    if not torch.compiler.is_compiling() and bool((scale == 1).all()):
        return None
    return scale


def _kd_rows_backward(ctx, grad_loss, _grad_grad):
    grad = ctx.kernel_grad
    ctx.kernel_grad = None
    if grad_loss is None:
        return (None,) * 10
    if grad is None:  # the buffer went to an earlier backward (retain_graph): compute it again
        student, teacher, labels = ctx.saved_tensors
        grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
        loss = torch.empty(student.shape[0], dtype=torch.float32, device=student.device)
        _launch(student, teacher, labels, *ctx.args, loss, grad)
    if grad.numel() == 0:
        return (None,) * 10
    scale = _row_scale(grad_loss, ctx.grad_scale)
    if scale is not None:
        if torch.compiler.is_compiling():
            grad = grad * scale[:, None].to(grad.dtype)
        else:
            grad.mul_(scale[:, None])  # the kernel's buffer is ours: one scaling pass, no new allocation
    return grad, None, None, None, None, None, None, None, None, None


kd_rows.register_autograd(_kd_rows_backward, setup_context=_kd_rows_setup)


def _prepare_labels(labels: Optional[Tensor], rows: int, V: int, ignore_index: int) -> Optional[Tensor]:
    if labels is None:
        return None
    lab = labels.reshape(-1).to(torch.int64).contiguous()
    if not torch.compiler.is_compiling() and lab.numel():
        bad = (lab != ignore_index) & ((lab < 0) | (lab >= V))
        if bool(bad.any()):
            raise ValueError(f"labels: values must lie in [0, {V}) or equal ignore_index={ignore_index}; "
                             f"found {int(lab[bad][0])}")
    return lab


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Optional[Tensor] = None, *,
            temperature: float = 1.0, alpha: float = 1.0, divergence: str = "forward_kl", beta: float = 0.5,
            ignore_index: int = -100, reduction: str = "batchmean") -> Tensor:
    """Distillation loss α·T²·D(p‖q) + (1−α)·CE over rows (DESIGN.md), fused where the extension allows."""
    check_args(student_logits, teacher_logits, labels, temperature, alpha, divergence, beta, reduction)
    if backend(student_logits.device.type) == "reference" or student_logits.dtype == torch.float64 \
            or teacher_logits.dtype == torch.float64:
        return kd_loss_reference(student_logits, teacher_logits, labels, temperature=temperature, alpha=alpha,
                                 divergence=divergence, beta=beta, ignore_index=ignore_index, reduction=reduction)
    lead, V = student_logits.shape[:-1], student_logits.shape[-1]
    s = _as_rows(student_logits)
    t = _as_rows(teacher_logits.detach())
    rows = s.shape[0]
    lab = _prepare_labels(labels, rows, V, ignore_index)
    compute_grad = torch.is_grad_enabled() and student_logits.requires_grad
    count, grad_scale = _batchmean_scale(lab, rows, ignore_index, reduction)
    row_loss, _ = torch.ops.edgekd.kd_rows(s, t, lab, float(temperature), float(alpha),
                                           _DIVERGENCES[divergence], float(beta), int(ignore_index),
                                           grad_scale, compute_grad)
    return _reduce(row_loss, lead, reduction, count, grad_scale, lab, ignore_index)


def _batchmean_scale(lab: Optional[Tensor], rows: int, ignore_index: int, reduction: str):
    """(counted rows, 1/count) for batchmean, so the kernel writes the final gradient; (None, 1) otherwise.

    Under torch.compile the count stays a tensor (no graph break) and backward does the scaling.
    """
    if reduction != "batchmean":
        return None, 1.0
    if lab is None:
        count = rows
    elif torch.compiler.is_compiling():
        return None, 1.0
    else:
        count = int((lab != ignore_index).sum())
    return count, 1.0 / max(count, 1)


def _reduce(row_loss: Tensor, lead, reduction: str, count, grad_scale: float, lab, ignore_index: int) -> Tensor:
    if reduction == "none":
        return row_loss.reshape(lead)
    if reduction == "sum":
        return row_loss.sum()
    if count is not None:
        return row_loss.sum() * grad_scale
    return row_loss.sum() / (lab != ignore_index).sum().clamp(min=1)


# --- fused linear + KD ---------------------------------------------------------------------------

def _default_chunk(rows: int, V: int) -> int:
    """Rows per chunk so one chunk of logits is about 4M elements (16 MB in float32)."""
    return max(1, min(rows, (1 << 22) // max(V, 1)))


def _linear_kd_chunks(hs, ws, bs, ht, wt, bt, labels, temperature, alpha, divergence, beta, ignore_index,
                      grad_scale, row_scale, chunk, compute_grad):
    """Run head matmuls and the fused kernel chunk by chunk; return row losses and the gradients."""
    rows, V = hs.shape[0], ws.shape[0]
    loss = hs.new_empty(rows, dtype=torch.float32)
    gh = torch.empty_like(hs) if compute_grad else hs.new_empty(0)
    acc = torch.float32 if ws.dtype != torch.float64 else torch.float64
    gw = torch.zeros(ws.shape, dtype=acc, device=ws.device) if compute_grad else ws.new_empty(0)
    gb = torch.zeros(V, dtype=acc, device=ws.device) if (compute_grad and bs is not None) else ws.new_empty(0)
    for start in range(0, rows, chunk):
        end = min(rows, start + chunk)
        h = hs[start:end]
        s_logits = torch.nn.functional.linear(h, ws, bs)
        t_logits = torch.nn.functional.linear(ht[start:end], wt, bt)
        lab = labels[start:end] if labels is not None else None
        g = torch.empty_like(s_logits) if compute_grad else None
        _launch(s_logits, t_logits, lab, temperature, alpha, divergence, beta, ignore_index, grad_scale,
                loss[start:end], g)
        if compute_grad:
            if row_scale is not None:
                g.mul_(row_scale[start:end, None])
            gh[start:end] = g @ ws
            gw.add_((g.t() @ h).to(acc))
            if bs is not None:
                gb.add_(g.sum(0, dtype=acc))
    return loss, gh, gw.to(ws.dtype) if compute_grad else gw, gb.to(ws.dtype) if gb.numel() else gb


@torch.library.custom_op("edgekd::linear_kd_rows", mutates_args=())
def linear_kd_rows(student_hidden: Tensor, student_weight: Tensor, student_bias: Optional[Tensor],
                   teacher_hidden: Tensor, teacher_weight: Tensor, teacher_bias: Optional[Tensor],
                   labels: Optional[Tensor], temperature: float, alpha: float, divergence: int, beta: float,
                   ignore_index: int, grad_scale: float, chunk_size: int,
                   compute_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row loss and grad_scale-scaled gradients for student hidden, weight and bias."""
    return _linear_kd_chunks(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
                             teacher_bias, labels, temperature, alpha, divergence, beta, ignore_index,
                             grad_scale, None, chunk_size, compute_grad)


@linear_kd_rows.register_fake
def _linear_kd_rows_fake(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
                         teacher_bias, labels, temperature, alpha, divergence, beta, ignore_index, grad_scale,
                         chunk_size, compute_grad):
    loss = student_hidden.new_empty(student_hidden.shape[0], dtype=torch.float32)
    if not compute_grad:
        e = student_hidden.new_empty(0)
        return loss, e, student_weight.new_empty(0), student_weight.new_empty(0)
    gb = student_weight.new_empty(student_weight.shape[0]) if student_bias is not None else \
        student_weight.new_empty(0)
    return loss, torch.empty_like(student_hidden), torch.empty_like(student_weight), gb


def _linear_setup(ctx, inputs, output):
    ctx.inputs = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[:7], output[1], output[2], output[3])


def _linear_backward(ctx, grad_loss, *_):
    hs, ws, bs, ht, wt, bt, labels, gh, gw, gb = ctx.saved_tensors
    (_, _, _, _, _, _, _, temperature, alpha, divergence, beta, ignore_index, grad_scale, chunk, compute) = ctx.inputs
    if not compute or grad_loss is None:
        return (None,) * 15
    scale = grad_loss / grad_scale
    uniform = None if torch.compiler.is_compiling() else bool((scale == scale[:1]).all()) if scale.numel() else True
    if uniform:
        c = scale[0] if scale.numel() else scale.new_ones(())
        if torch.compiler.is_compiling() or float(c) != 1.0:
            gh, gw = gh * c.to(gh.dtype), gw * c.to(gw.dtype)
            gb = gb * c.to(gb.dtype) if gb.numel() else gb
    else:  # per-row upstream gradient (reduction="none"): the weight gradient must be recomputed
        _, gh, gw, gb = _linear_kd_chunks(hs, ws, bs, ht, wt, bt, labels, temperature, alpha, divergence, beta,
                                          ignore_index, grad_scale, scale.to(torch.float32), chunk, True)
    return (gh, gw, gb if bs is not None else None) + (None,) * 12


linear_kd_rows.register_autograd(_linear_backward, setup_context=_linear_setup)


def fused_linear_kd_loss(student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor,
                         teacher_weight: Tensor, labels: Optional[Tensor] = None, *,
                         student_bias: Optional[Tensor] = None, teacher_bias: Optional[Tensor] = None,
                         chunk_size: Optional[int] = None, temperature: float = 1.0, alpha: float = 1.0,
                         divergence: str = "forward_kl", beta: float = 0.5, ignore_index: int = -100,
                         reduction: str = "batchmean") -> Tensor:
    """kd_loss(student_hidden @ Wsᵀ + bs, teacher_hidden @ Wtᵀ + bt) without ever holding rows × vocab logits."""
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(f"teacher_hidden: leading shape {tuple(teacher_hidden.shape[:-1])} does not match "
                         f"student_hidden {tuple(student_hidden.shape[:-1])}")
    if student_weight.shape[-1] != student_hidden.shape[-1]:
        raise ValueError(f"student_weight: shape {tuple(student_weight.shape)} does not fit hidden size "
                         f"{student_hidden.shape[-1]}")
    if teacher_weight.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(f"teacher_weight: shape {tuple(teacher_weight.shape)} does not fit hidden size "
                         f"{teacher_hidden.shape[-1]}")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"teacher_weight: vocabulary {teacher_weight.shape[0]} differs from the student's "
                         f"{student_weight.shape[0]}")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size: must be positive, got {chunk_size}")
    lead, V = student_hidden.shape[:-1], student_weight.shape[0]
    check_args(torch.empty(lead + (V,), device="meta"), torch.empty(lead + (V,), device="meta"),
               None if labels is None else labels.to("meta"), temperature, alpha, divergence, beta, reduction)
    if backend(student_hidden.device.type) == "reference" or student_hidden.dtype == torch.float64:
        s = torch.nn.functional.linear(student_hidden, student_weight, student_bias)
        t = torch.nn.functional.linear(teacher_hidden, teacher_weight, teacher_bias)
        return kd_loss_reference(s, t, labels, temperature=temperature, alpha=alpha, divergence=divergence,
                                 beta=beta, ignore_index=ignore_index, reduction=reduction)
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    rows = hs.shape[0]
    lab = _prepare_labels(labels, rows, V, ignore_index)
    compute_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (student_hidden, student_weight, student_bias))
    count, grad_scale = _batchmean_scale(lab, rows, ignore_index, reduction)
    chunk = int(chunk_size) if chunk_size else _default_chunk(rows, V)
    row_loss = torch.ops.edgekd.linear_kd_rows(
        hs, student_weight, student_bias, ht, teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(), lab, float(temperature), float(alpha),
        _DIVERGENCES[divergence], float(beta), int(ignore_index), grad_scale, chunk, compute_grad)[0]
    return _reduce(row_loss, lead, reduction, count, grad_scale, lab, ignore_index)
