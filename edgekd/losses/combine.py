"""The weighted sum of loss terms declared in config, and its builder."""

from __future__ import annotations

import inspect
import math
from typing import Any, Optional

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.losses.outputs import get_field
from edgekd.losses.base import LOSSES, LossView, Setup, auto_temperature, is_causal
from edgekd.models.arch import param_count

DEFAULT_SPEC = [{"name": "kd", "weight": 1.0, "divergence": "forward_kl", "temperature": 1.0, "alpha": 0.7}]


class LossSum(nn.Module):
    """total = Σ weight_i · term_i; `parts` maps each term's key to its weighted value (detached).

    A teacher output carrying `teacher_loss` (the online scheme's teacher CE) adds it to the total
    as part "teacher_ce", so the trainer's one backward/step trains the teacher too.

    Its parameters are the learned projections of the terms: give them to the optimizer, move the
    module to the training device. The needs_* flags say what the model outputs must carry.
    """

    def __init__(self, terms: list[tuple[str, float, nn.Module]], causal: bool):
        super().__init__()
        self.keys = [k for k, _, _ in terms]
        self.weights = {k: w for k, w, _ in terms}
        self.terms = nn.ModuleDict({k: m for k, _, m in terms})
        self.causal = causal
        for flag in ("needs_teacher", "needs_logits", "needs_hidden_states", "needs_attentions", "needs_last_hidden",
                     "needs_alignment"):
            setattr(self, flag, any(getattr(m, flag) for _, _, m in terms))
        response = [m for _, _, m in terms if hasattr(m, "temperature")]
        self.temperature: Optional[float] = response[0].temperature if response else None
        self.alpha: Optional[float] = response[0].alpha if response else None

    def forward(self, student_out: Any, teacher_out: Any, labels: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """labels: UNshifted ([B,S] input ids with -100 on padding, or [B] classes); the mask defaults from them."""
        view = LossView(student_out, teacher_out, labels, attention_mask, self.causal)
        total, parts = None, {}
        for k in self.keys:
            value = self.weights[k] * self.terms[k](view)
            parts[k] = value.detach()
            total = value if total is None else total + value
        teacher_loss = get_field(teacher_out, "teacher_loss")
        if teacher_loss is not None:  # online scheme: the teacher learns from the labels in the same step
            parts["teacher_ce"] = teacher_loss.detach()
            total = total + teacher_loss
        return total, parts


def _resolve_temperature(entry: dict, student_config, teacher_config, params: tuple) -> None:
    if entry.get("temperature") != "auto":
        return
    tp, sp = params
    tp = tp if tp is not None else param_count(teacher_config)
    sp = sp if sp is not None else param_count(student_config)
    entry["temperature"] = auto_temperature(tp, sp)


def build_loss(spec: list[dict] | dict | None, student_config, teacher_config, *, causal: Optional[bool] = None,
               student_params: Optional[int] = None, teacher_params: Optional[int] = None) -> LossSum:
    """Build the weighted sum from config. spec None -> kd, forward KL, T = 2, α = 0.5.

    `causal` overrides the detection from the student config (shift labels inside the loss);
    `temperature: "auto"` uses the given parameter counts, else counts them from the configs.
    """
    if spec is None:
        spec = DEFAULT_SPEC
    if isinstance(spec, (dict, str)):
        spec = [spec]
    if not isinstance(spec, (list, tuple)) or not spec:
        raise EdgekdError(f"the loss spec must be a non-empty list of {{'name': ..., 'weight': ...}} entries, got {spec!r}")
    causal = is_causal(student_config) if causal is None else bool(causal)
    setup = Setup(student_config, teacher_config, causal)
    terms, seen = [], {}
    for raw in spec:
        entry = {"name": raw} if isinstance(raw, str) else dict(raw) if isinstance(raw, dict) else None
        if entry is None or not isinstance(entry.get("name"), str):
            raise EdgekdError(f"each loss entry needs a 'name'; got {raw!r}")
        name = entry.pop("name")
        if name not in LOSSES:
            raise EdgekdError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}")
        weight = entry.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise EdgekdError(f"loss {name!r}: weight must be a finite number >= 0, got {weight!r}")
        _resolve_temperature(entry, student_config, teacher_config, (teacher_params, student_params))
        cls = LOSSES[name]
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "setup")]
        for key in entry:
            if key not in allowed:
                raise EdgekdError(f"loss {name!r}: unknown argument {key!r}; it takes "
                                  f"{', '.join(['weight'] + allowed)}")
        seen[name] = seen.get(name, 0) + 1
        key = name if seen[name] == 1 else f"{name}_{seen[name]}"
        terms.append((key, float(weight), cls(setup, **entry)))
    return LossSum(terms, causal)
