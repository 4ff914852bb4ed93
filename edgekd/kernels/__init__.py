"""Fused distillation losses: the C++/CUDA kernels behind one Python API (see DESIGN.md).

`kd_loss` and `fused_linear_kd_loss` use the fused kernels where the extension has them and the
float64 reference otherwise (or always, after `force_reference(True)`: EDGEKD_KERNEL=reference handed over
by an edge from Settings); `backend(device_type)` says which. `eager_kd_loss` is the same loss
unfused, as people write it: the baseline the benchmarks measure against.
"""

from edgekd.kernels.reference import eager_kd_loss, kd_loss_reference
from edgekd.kernels.ops import backend, force_reference, fused_linear_kd_loss, kd_loss

__all__ = ["kd_loss", "kd_loss_reference", "eager_kd_loss", "fused_linear_kd_loss", "backend", "force_reference"]
