"""The distillation hyperparameters: one default each, the one "auto" temperature rule, the one check of
each value. Torch-free and low in the import order: the CLI's options, `DistillConfig`, every response
loss, the multi-teacher scheme and the kernels' Python face all read their defaults from here.

The checks raise one EdgekdError line naming the value (`name`, e.g. "--alpha" or "loss 'kd': alpha");
they run at the edge (the CLI and config validation, `losses.build_loss` for a loss spec), not again in
each class. The kernels keep their own ValueError checks: that is their documented API (DESIGN.md).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from edgekd.errors import EdgekdError

DEFAULT_TEMPERATURE = 1.0          # benchmarks/kd_sweep.py's best
DEFAULT_ALPHA = 0.7                # benchmarks/kd_sweep.py's best: weight of the distillation term against CE
DEFAULT_DIVERGENCE = "forward_kl"
DEFAULT_BETA = 0.5                 # jsd's β: the mixture m = βp + (1 − β)q
DEFAULT_SKEW = 0.1                 # the skew divergences' λ (DistiLLM, Ko et al. 2024)
AUTO = "auto"                      # temperature "auto": `auto_temperature` of the parameter counts
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl")


def auto_temperature(teacher_params: int, student_params: int) -> float:
    """T = log2(teacher / student) + 1, at least 1: a larger capacity gap wants softer teacher targets
    (the one "auto" rule). A student as large as its teacher (self-distillation) gets T = 1."""
    if not (teacher_params > 0 and student_params > 0):
        raise EdgekdError(f"temperature 'auto' needs positive parameter counts, got teacher={teacher_params}, "
                          f"student={student_params}")
    return math.log2(max(teacher_params / student_params, 1.0)) + 1.0


def resolve_temperature(value: Any, params: Callable[[], tuple[int, int]]) -> float:
    """A temperature as a number: "auto" from `params()` -> (teacher, student) parameter counts (asked for
    only then), anything else as it is. The one place "auto" is resolved."""
    if value == AUTO:
        return auto_temperature(*params())
    return float(value)


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def check_temperature(name: str, value: Any, *, auto: bool = True) -> None:
    """T > 0 and finite (or "auto" where `auto`)."""
    if auto and value == AUTO:
        return
    if not (_is_number(value) and value > 0):
        raise EdgekdError(f"{name} must be a number > 0{' or ' + repr(AUTO) if auto else ''}, got {value!r}")


def check_alpha(name: str, value: Any) -> None:
    """α in [0, 1]: the weight of the distillation term (1 − α weights the hard-label CE)."""
    if not (_is_number(value) and 0.0 <= value <= 1.0):
        raise EdgekdError(f"{name} must be a number in [0, 1], got {value!r}")


def check_divergence(name: str, divergence: Any, beta: Any = DEFAULT_BETA, skew: Any = DEFAULT_SKEW) -> None:
    """The divergence, jsd's β in [0, 1] and the skew λ in (0, 1]; `name` prefixes each ("loss 'kd': ")."""
    if divergence not in DIVERGENCES:
        raise EdgekdError(f"{name}unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if not (_is_number(beta) and 0.0 <= beta <= 1.0):
        raise EdgekdError(f"{name}beta must be a number in [0, 1], got {beta!r}")
    if not (_is_number(skew) and 0.0 < skew <= 1.0):
        raise EdgekdError(f"{name}skew must be a number in (0, 1] (DistiLLM uses {DEFAULT_SKEW}), got {skew!r}")
