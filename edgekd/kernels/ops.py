"""Declares the fused kernels to torch (torch.library custom ops with fake and autograd parts).

The forward op returns the per-row loss and, when the student needs a gradient, that gradient
already scaled for the reduction, written by the same kernel call. Backward is one more op that
rescales that buffer in place to the upstream gradient: nothing when the upstream gradient is what
the kernel assumed (the usual `loss.backward()`), one float32 scaling pass otherwise, or for
bfloat16/float16 the kernel again with the per-row factor applied before its one rounding. Nothing
of size rows × vocab is allocated besides that gradient. Every backward is made of registered ops
and traceable torch ops, so torch.compile, torch.func and torch.library.opcheck see through it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from edgekd.hyperparams import DEFAULT_BETA, DEFAULT_DIVERGENCE, DEFAULT_SKEW, DEFAULT_TEMPERATURE
from edgekd.kernels.reference import check_args, kd_loss_reference, mix_weight

try:
    from edgekd import _C
except ImportError:  # built without the extension: everything runs on the reference
    _C = None

_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# kd_common.h's Divergence enum. The ops' `beta` is the mixture coefficient: β for jsd, the skew λ for
# skew_kl / skew_reverse_kl (reference.mix_weight).
_DIVERGENCES = {"forward_kl": 0, "reverse_kl": 1, "jsd": 2, "skew_kl": 3, "skew_reverse_kl": 4}


_reference_forced = False  # Settings.kernel == "reference" (EDGEKD_KERNEL), handed over by `force_reference`


def force_reference(on: bool) -> None:
    """Run every `kd_loss` / `fused_linear_kd_loss` on the PyTorch reference (`on`), or where the extension
    allows on the fused kernels: set once by an edge from `Settings.kernel` (edgekd.distill.apply_settings)."""
    global _reference_forced
    _reference_forced = bool(on)


def backend(device_type: str = "cpu") -> str:
    """Which implementation `kd_loss` uses on this device type: "fused-cpu", "fused-cuda" or "reference"."""
    if _C is None or _reference_forced:
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
    """Per-row KD(+CE) loss [rows] (float32) and grad_scale · d(row loss)/d(student) [rows, V] (or empty).

    kd_loss's autograd (_KDRows) keeps the second output private and makes it the backward's result in
    place (kd_rows_rescale_); the op's own registered backward, for direct callers, leaves it alone."""
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


@torch.library.custom_op("edgekd::kd_rows_rescale_", mutates_args=("grad",))
def kd_rows_rescale_(grad: Tensor, student: Tensor, teacher: Tensor, labels: Optional[Tensor], grad_loss: Tensor,
                     temperature: float, alpha: float, divergence: int, beta: float, ignore_index: int,
                     grad_scale: float, fresh: bool) -> None:
    """Makes kd_rows' gradient buffer (grad_scale · d row_loss/d student; garbage when `fresh`) into
    grad_loss[r] · d row_loss[r]/d student[r], in place.

    Nothing to do when grad_loss is grad_scale on every row (the usual `loss.backward()`); a float32
    buffer is scaled once; a bfloat16/float16 one is written again by the kernel with the factor applied
    in float32 before its one rounding (scaling it in place would round twice)."""
    if grad.numel() == 0:
        return
    if not fresh:
        scale = grad_loss.float() / grad_scale
        if bool((scale == 1).all()):
            return
        if grad.dtype == torch.float32:
            grad.mul_(scale[:, None])
            return
    loss = torch.empty(student.shape[0], dtype=torch.float32, device=student.device)
    _launch(student, teacher, labels, temperature, alpha, divergence, beta, ignore_index, 1.0, loss, grad,
            row_scale=grad_loss)


@kd_rows_rescale_.register_fake
def _kd_rows_rescale_fake(grad, student, teacher, labels, grad_loss, temperature, alpha, divergence, beta,
                          ignore_index, grad_scale, fresh):
    return None


def _kd_rows_setup(ctx, inputs, output):
    ctx.args = inputs[3:9]
    ctx.compute_grad = inputs[9]
    ctx.set_materialize_grads(False)  # else autograd fills a zero rows × vocab grad for the second output
    ctx.save_for_backward(*inputs[:3])


def _kd_rows_backward(ctx, grad_loss, *_, bufs=None):
    """d/d student for the upstream grad_loss. The op's own backward (bufs=None) has no buffer it may
    write to, its second output being the caller's: the kernel writes a new one. kd_loss's Function
    passes the forward's buffer, private to it, which is rescaled in place (usually: left as it is)."""
    if grad_loss is None or not ctx.compute_grad:
        return (None,) * 10
    student, teacher, labels = ctx.saved_tensors
    fresh = bufs is None
    grad = student.new_empty(student.shape) if fresh else bufs[0]
    with torch.no_grad():  # not twice differentiable; under torch.func backward runs with grad mode on
        torch.ops.edgekd.kd_rows_rescale_(grad, student, teacher, labels, grad_loss, *ctx.args, fresh)
    return grad, None, None, None, None, None, None, None, None, None


kd_rows.register_autograd(_kd_rows_backward, setup_context=_kd_rows_setup)


def _private_grads_function(name, op, setup_context, backward):
    """An autograd.Function over `op` (the loss first, then its gradient buffers) for the public
    functions, which drop the buffers: they stay private, so backward may rescale them in place and hand
    them to autograd, which adopts them as .grad (no copy, no second kernel pass). Held as plain
    attributes, not saved tensors, for the same reason; a second backward (retain_graph) finds them gone
    and recomputes. A Function with setup_context, so torch.func transforms work too."""

    def forward(*args):
        return op(*args)

    def setup(ctx, inputs, output):
        setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(*output[1:])
        ctx.bufs = tuple(output[1:])

    def backward_(ctx, grad_loss, *_):
        bufs, ctx.bufs = ctx.bufs, None
        return backward(ctx, grad_loss, bufs=bufs)

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                   "setup_context": staticmethod(setup),
                                                   "backward": staticmethod(backward_)})


_KDRows = _private_grads_function("_KDRows", torch.ops.edgekd.kd_rows, _kd_rows_setup, _kd_rows_backward)


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
            temperature: float = DEFAULT_TEMPERATURE, alpha: float = 1.0, divergence: str = DEFAULT_DIVERGENCE,
            beta: float = DEFAULT_BETA, ignore_index: int = -100, reduction: str = "batchmean",
            skew: float = DEFAULT_SKEW) -> Tensor:
    """Distillation loss α·T²·D(p‖q) + (1−α)·CE over rows (DESIGN.md), fused where the extension allows.
    `skew`: λ of skew_kl / skew_reverse_kl (DistiLLM's default 0.1); `beta`: jsd's β."""
    check_args(student_logits, teacher_logits, labels, temperature, alpha, divergence, beta, reduction, skew)
    if backend(student_logits.device.type) == "reference" or student_logits.dtype == torch.float64 \
            or teacher_logits.dtype == torch.float64:
        return kd_loss_reference(student_logits, teacher_logits, labels, temperature=temperature, alpha=alpha,
                                 divergence=divergence, beta=beta, ignore_index=ignore_index, reduction=reduction,
                                 skew=skew)
    lead, V = student_logits.shape[:-1], student_logits.shape[-1]
    s = _as_rows(student_logits)
    t = _as_rows(teacher_logits.detach())
    rows = s.shape[0]
    lab = _prepare_labels(labels, rows, V, ignore_index)
    compute_grad = torch.is_grad_enabled() and student_logits.requires_grad
    count, grad_scale = _batchmean_scale(lab, rows, ignore_index, reduction)
    row_loss, _ = _KDRows.apply(s, t, lab, float(temperature), float(alpha), _DIVERGENCES[divergence],
                                float(mix_weight(divergence, beta, skew)), int(ignore_index), grad_scale, compute_grad)
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

_CHUNK_ELEMENTS = 1 << 23
_MIN_CHUNK_ROWS = 256


def _default_chunk(rows: int, V: int) -> int:
    """Rows per chunk: about 8M logits (32 MB in float32) per buffer, but at least 256 rows, so the head
    matmuls stay GEMMs that run near the machine's peak (skinny ones lose 10-30%) at any vocabulary."""
    return max(1, min(rows, max(_MIN_CHUNK_ROWS, _CHUNK_ELEMENTS // max(V, 1))))


def _teacher_rows(ht, wt, bt, ti, start: int, end: int, V: int, buf: Optional[Tensor]) -> Tensor:
    """The teacher's logits for rows [start, end), in one of its three forms: final hidden states and an
    LM head (wt given: one matmul into `buf`), full logits (ht is [rows, V]: a view), or its top-k
    (ti given: ht holds the kept values, every other entry is −inf)."""
    if wt is not None:
        out = buf[: end - start]
        if bt is not None:
            return torch.addmm(bt, ht[start:end], wt.t(), out=out)
        return torch.mm(ht[start:end], wt.t(), out=out)
    if ti is None:
        return ht[start:end]
    out = buf[: end - start].fill_(float("-inf"))
    return out.scatter_(1, ti[start:end].long(), ht[start:end].to(out.dtype))


def _linear_kd_chunks(hs, ws, bs, ht, wt, bt, ti, labels, temperature, alpha, divergence, beta, ignore_index,
                      grad_scale, row_scale, chunk, compute_grad, out=None):
    """Run the head matmuls and the fused kernel chunk by chunk; return row losses and the gradients
    (written into `out` = (gh, gw, gb) when given). The kernel applies grad_scale · row_scale[r] before it
    rounds and writes the logits' gradient over the student's logits; two chunk buffers serve every chunk."""
    rows, V = hs.shape[0], ws.shape[0]
    loss = hs.new_empty(rows, dtype=torch.float32)
    if out is not None:
        gh, gw_out, gb_out = out
    else:
        gh = hs.new_empty(hs.shape) if compute_grad else hs.new_empty(0)
        gw_out = ws.new_empty(ws.shape) if compute_grad else ws.new_empty(0)
        gb_out = ws.new_empty(V) if (compute_grad and bs is not None) else ws.new_empty(0)
    acc = torch.float64 if ws.dtype == torch.float64 else torch.float32
    gw = gb = None
    if compute_grad:  # weight and bias gradients summed over chunks, in float32 (in place when they are)
        gw = gw_out.zero_() if gw_out.dtype == acc else torch.zeros(ws.shape, dtype=acc, device=ws.device)
        if bs is not None:
            gb = gb_out.zero_() if gb_out.dtype == acc else torch.zeros(V, dtype=acc, device=ws.device)
    n = min(chunk, rows)
    s_buf = hs.new_empty((n, V))
    t_buf = None if (wt is None and ti is None) else ht.new_empty((n, V))
    for start in range(0, rows, chunk):
        end = min(rows, start + chunk)
        h = hs[start:end]
        s_logits = s_buf[: end - start]
        if bs is not None:
            torch.addmm(bs, h, ws.t(), out=s_logits)
        else:
            torch.mm(h, ws.t(), out=s_logits)
        t_logits = _teacher_rows(ht, wt, bt, ti, start, end, V, t_buf)
        lab = labels[start:end] if labels is not None else None
        _launch(s_logits, t_logits, lab, temperature, alpha, divergence, beta, ignore_index, grad_scale,
                loss[start:end], s_logits if compute_grad else None,
                None if row_scale is None else row_scale[start:end])
        if compute_grad:
            g = s_logits
            torch.mm(g, ws, out=gh[start:end])
            if gw.dtype == g.dtype:
                gw.addmm_(g.t(), h)
            else:
                gw.add_(g.t() @ h)
            if gb is not None:
                gb.add_(g.sum(0, dtype=acc))
    if compute_grad:
        if gw is not gw_out:
            gw_out.copy_(gw)
        if gb is not None and gb is not gb_out:
            gb_out.copy_(gb)
    return loss, gh, gw_out, gb_out


@torch.library.custom_op("edgekd::linear_kd_rows", mutates_args=())
def linear_kd_rows(student_hidden: Tensor, student_weight: Tensor, student_bias: Optional[Tensor],
                   teacher_hidden: Tensor, teacher_weight: Optional[Tensor], teacher_bias: Optional[Tensor],
                   teacher_indices: Optional[Tensor], labels: Optional[Tensor], temperature: float, alpha: float, divergence: int, beta: float,
                   ignore_index: int, grad_scale: float, chunk_size: int,
                   compute_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row loss and grad_scale-scaled gradients for student hidden, weight and bias.

    The teacher is (teacher_hidden, teacher_weight, teacher_bias), or with teacher_weight None its logits
    (teacher_hidden [rows, V]), or with teacher_indices too its top-k (teacher_hidden [rows, k] values).

    fused_linear_kd_loss's autograd (_LinearKDRows) keeps the gradients private and makes them the
    backward's results in place (linear_kd_rescale_); the op's own registered backward leaves them alone."""
    return _linear_kd_chunks(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
                             teacher_bias, teacher_indices, labels, temperature, alpha, divergence, beta, ignore_index,
                             grad_scale, None, chunk_size, compute_grad)


@linear_kd_rows.register_fake
def _linear_kd_rows_fake(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
                         teacher_bias, teacher_indices, labels, temperature, alpha, divergence, beta, ignore_index, grad_scale,
                         chunk_size, compute_grad):
    loss = student_hidden.new_empty(student_hidden.shape[0], dtype=torch.float32)
    if not compute_grad:
        e = student_hidden.new_empty(0)
        return loss, e, student_weight.new_empty(0), student_weight.new_empty(0)
    gb = student_weight.new_empty(student_weight.shape[0]) if student_bias is not None else \
        student_weight.new_empty(0)
    return loss, student_hidden.new_empty(student_hidden.shape), student_weight.new_empty(student_weight.shape), gb


@torch.library.custom_op("edgekd::linear_kd_rescale_", mutates_args=("grad_hidden", "grad_weight", "grad_bias"))
def linear_kd_rescale_(grad_hidden: Tensor, grad_weight: Tensor, grad_bias: Tensor, student_hidden: Tensor,
                       student_weight: Tensor, student_bias: Optional[Tensor], teacher_hidden: Tensor,
                       teacher_weight: Optional[Tensor], teacher_bias: Optional[Tensor],
                       teacher_indices: Optional[Tensor], labels: Optional[Tensor],
                       grad_loss: Tensor, temperature: float, alpha: float, divergence: int, beta: float,
                       ignore_index: int, grad_scale: float, chunk_size: int, fresh: bool) -> None:
    """Makes linear_kd_rows' gradients (for grad_scale; garbage when `fresh`) into those for the upstream
    gradient grad_loss, in place: nothing when it is grad_scale on every row; one scaling pass when it is
    the same on every row and the buffers are float32; otherwise (a per-row factor, or bfloat16/float16
    buffers, which scaling would round twice) the chunks again, the factor applied in the kernel."""
    if grad_hidden.numel() == 0 and grad_weight.numel() == 0:
        return
    if not fresh:
        scale = grad_loss.float() / grad_scale
        if bool((scale == 1).all()):
            return
        if grad_hidden.dtype == torch.float32 and bool((scale == scale[0]).all()):
            for g in (grad_hidden, grad_weight, grad_bias):
                g.mul_(scale[0])
            return
    _linear_kd_chunks(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias,
                      teacher_indices, labels, temperature, alpha, divergence, beta, ignore_index, 1.0, grad_loss, chunk_size, True,
                      out=(grad_hidden, grad_weight, grad_bias))


@linear_kd_rescale_.register_fake
def _linear_kd_rescale_fake(grad_hidden, grad_weight, grad_bias, student_hidden, student_weight, student_bias,
                            teacher_hidden, teacher_weight, teacher_bias, teacher_indices, labels, grad_loss, temperature, alpha,
                            divergence, beta, ignore_index, grad_scale, chunk_size, fresh):
    return None


def _linear_setup(ctx, inputs, output):
    ctx.args = inputs[8:15]
    ctx.compute_grad = inputs[15]
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[:8])


def _linear_backward(ctx, grad_loss, *_, bufs=None):
    """As _kd_rows_backward: the op's own backward runs the chunks again into new buffers;
    fused_linear_kd_loss's Function passes the forward's gradients, private to it, rescaled in place."""
    if not ctx.compute_grad or grad_loss is None:
        return (None,) * 16
    hs, ws, bs, ht, wt, bt, ti, labels = ctx.saved_tensors
    fresh = bufs is None
    if fresh:
        bufs = (hs.new_empty(hs.shape), ws.new_empty(ws.shape), ws.new_empty(ws.shape[0] if bs is not None else 0))
    gh, gw, gb = bufs
    with torch.no_grad():
        torch.ops.edgekd.linear_kd_rescale_(gh, gw, gb, hs, ws, bs, ht, wt, bt, ti, labels, grad_loss, *ctx.args,
                                            fresh)
    return (gh, gw, gb if bs is not None else None) + (None,) * 13


linear_kd_rows.register_autograd(_linear_backward, setup_context=_linear_setup)


_LinearKDRows = _private_grads_function("_LinearKDRows", torch.ops.edgekd.linear_kd_rows, _linear_setup,
                                        _linear_backward)


def _dense_topk(values: Tensor, indices: Tensor, V: int) -> Tensor:
    """Full-vocabulary logits that are −inf off the kept entries."""
    out = values.new_full((*values.shape[:-1], V), float("-inf"))
    return out.scatter(-1, indices.long(), values)


def _check_linear_args(student_hidden, student_weight, teacher_hidden, teacher_weight, teacher_logits,
                       teacher_indices, chunk_size) -> None:
    lead, H, V = student_hidden.shape[:-1], student_hidden.shape[-1], student_weight.shape[0]
    if student_weight.shape[-1] != H:
        raise ValueError(f"student_weight: shape {tuple(student_weight.shape)} does not fit hidden size {H}")
    if (teacher_logits is None) == (teacher_hidden is None or teacher_weight is None):
        raise ValueError("give the teacher as teacher_hidden with teacher_weight, or as teacher_logits (with "
                         "teacher_indices for a top-k teacher), not both")
    if teacher_logits is not None:
        shape = teacher_logits.shape
        if shape[:-1] != lead:
            raise ValueError(f"teacher_logits: leading shape {tuple(shape[:-1])} does not match "
                             f"student_hidden {tuple(lead)}")
        if teacher_indices is None and shape[-1] != V:
            raise ValueError(f"teacher_logits: vocabulary {shape[-1]} differs from the student's {V}")
        if teacher_indices is not None and teacher_indices.shape != shape:
            raise ValueError(f"teacher_indices: shape {tuple(teacher_indices.shape)} differs from the top-k "
                             f"values' {tuple(shape)}")
        if teacher_indices is not None and teacher_indices.numel() and \
                not torch.compiler.is_compiling() and int(teacher_indices.max()) >= V:
            raise ValueError(f"teacher_indices: id {int(teacher_indices.max())} is outside the student's "
                             f"vocabulary of {V}")
    else:
        if teacher_hidden.shape[:-1] != lead:
            raise ValueError(f"teacher_hidden: leading shape {tuple(teacher_hidden.shape[:-1])} does not match "
                             f"student_hidden {tuple(lead)}")
        if teacher_weight.shape[-1] != teacher_hidden.shape[-1]:
            raise ValueError(f"teacher_weight: shape {tuple(teacher_weight.shape)} does not fit hidden size "
                             f"{teacher_hidden.shape[-1]}")
        if teacher_weight.shape[0] != V:
            raise ValueError(f"teacher_weight: vocabulary {teacher_weight.shape[0]} differs from the student's {V}")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size: must be positive, got {chunk_size}")


def fused_linear_kd_loss(student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Optional[Tensor] = None,
                         teacher_weight: Optional[Tensor] = None, labels: Optional[Tensor] = None, *,
                         teacher_logits: Optional[Tensor] = None, teacher_indices: Optional[Tensor] = None,
                         student_bias: Optional[Tensor] = None, teacher_bias: Optional[Tensor] = None,
                         chunk_size: Optional[int] = None, temperature: float = DEFAULT_TEMPERATURE,
                         alpha: float = 1.0, divergence: str = DEFAULT_DIVERGENCE, beta: float = DEFAULT_BETA,
                         ignore_index: int = -100, reduction: str = "batchmean", skew: float = DEFAULT_SKEW) -> Tensor:
    """kd_loss(student_hidden @ Wsᵀ + bs, teacher's logits) without ever holding rows × vocab student logits.

    The teacher is its final hidden states and LM head (teacher_hidden, teacher_weight, teacher_bias: no
    rows × vocab teacher logits either), or its logits (teacher_logits), or its top-k (teacher_logits the
    kept values, teacher_indices their vocabulary ids; every other entry is −inf, as in kd_loss). Under
    autocast the head matmuls run in the autocast dtype and the kernel reads that dtype.
    """
    _check_linear_args(student_hidden, student_weight, teacher_hidden, teacher_weight, teacher_logits,
                       teacher_indices, chunk_size)
    lead, V = student_hidden.shape[:-1], student_weight.shape[0]
    check_args(torch.empty(lead + (V,), device="meta"), torch.empty(lead + (V,), device="meta"),
               None if labels is None else labels.to("meta"), temperature, alpha, divergence, beta, reduction,
               skew)
    device_type = student_hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dt = torch.get_autocast_dtype(device_type)
        cast = lambda x: None if x is None else x.to(dt)  # noqa: E731 (differentiable casts)
        student_hidden, student_weight, student_bias = map(cast, (student_hidden, student_weight, student_bias))
        if teacher_logits is None:
            teacher_hidden, teacher_weight, teacher_bias = map(cast, (teacher_hidden, teacher_weight, teacher_bias))
    if backend(device_type) == "reference" or student_hidden.dtype == torch.float64:
        s = torch.nn.functional.linear(student_hidden, student_weight, student_bias)
        if teacher_logits is None:
            t = torch.nn.functional.linear(teacher_hidden, teacher_weight, teacher_bias)
        else:
            t = teacher_logits if teacher_indices is None else _dense_topk(teacher_logits, teacher_indices, V)
        return kd_loss_reference(s, t, labels, temperature=temperature, alpha=alpha, divergence=divergence,
                                 beta=beta, ignore_index=ignore_index, reduction=reduction, skew=skew)
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    if teacher_logits is None:
        ht, wt = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1]), teacher_weight.detach()
        bt = None if teacher_bias is None else teacher_bias.detach()
        ti = None
    else:
        ht, wt, bt = _as_rows(teacher_logits.detach()), None, None
        ti = None if teacher_indices is None else teacher_indices.reshape(-1, teacher_indices.shape[-1])
    rows = hs.shape[0]
    lab = _prepare_labels(labels, rows, V, ignore_index)
    compute_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (student_hidden, student_weight, student_bias))
    count, grad_scale = _batchmean_scale(lab, rows, ignore_index, reduction)
    chunk = int(chunk_size) if chunk_size else _default_chunk(rows, V)
    with torch.autocast(device_type, enabled=False):
        row_loss = _LinearKDRows.apply(
            hs, student_weight, student_bias, ht, wt, bt, ti, lab, float(temperature), float(alpha),
            _DIVERGENCES[divergence], float(mix_weight(divergence, beta, skew)), int(ignore_index), grad_scale,
            chunk, compute_grad)[0]
    return _reduce(row_loss, lead, reduction, count, grad_scale, lab, ignore_index)
