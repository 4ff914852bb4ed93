"""Fused distillation losses: the C++/CUDA kernels behind one Python API (see DESIGN.md).

`kd_loss` and `fused_linear_kd_loss` use the fused kernels where the extension has them and the
float64 reference otherwise; `backend(device_type)` says which.
"""

from edgekd.kernels.reference import kd_loss_reference
from edgekd.kernels.ops import backend, fused_linear_kd_loss, kd_loss

__all__ = ["kd_loss", "kd_loss_reference", "fused_linear_kd_loss", "backend"]
