"""The weighted sum of loss terms declared in config, and its builder."""

from __future__ import annotations

import inspect
import math
from typing import Any, Optional

import torch
from torch import nn

from edgekd import hyperparams as hp
from edgekd.errors import EdgekdError
from edgekd.losses.outputs import get_field
from edgekd.losses.base import LOSSES, LossView, Setup, is_causal
from edgekd.models.arch import param_count

# The CLI's loss (and DistillConfig's): kd at the one default temperature and alpha (edgekd.hyperparams).
DEFAULT_SPEC = [{"name": "kd", "weight": 1.0, "divergence": hp.DEFAULT_DIVERGENCE,
                 "temperature": hp.DEFAULT_TEMPERATURE, "alpha": hp.DEFAULT_ALPHA}]


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


def check_term(name: str, entry: dict) -> None:
    """The hyperparameters a loss spec entry sets (temperature, alpha, divergence, beta, skew), each checked
    by edgekd.hyperparams' one check: at the edge, by build_loss and by the run's validation."""
    where = f"loss {name!r}: "
    if "temperature" in entry:
        hp.check_temperature(where + "temperature", entry["temperature"])
    if "alpha" in entry:
        hp.check_alpha(where + "alpha", entry["alpha"])
    if {"divergence", "beta", "skew"} & set(entry):
        hp.check_divergence(where, entry.get("divergence", hp.DEFAULT_DIVERGENCE), entry.get("beta", hp.DEFAULT_BETA),
                            entry.get("skew", hp.DEFAULT_SKEW))


def check_spec(spec) -> None:
    """check_term for every well-formed entry of a loss spec, before any model is loaded (build_loss names
    what is wrong with the others)."""
    for raw in spec or []:
        if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"] in LOSSES:
            check_term(raw["name"], raw)


def build_loss(spec: list[dict] | dict | None, student_config, teacher_config, *, causal: Optional[bool] = None,
               student_params: Optional[int] = None, teacher_params: Optional[int] = None) -> LossSum:
    """Build the weighted sum from config. spec None -> DEFAULT_SPEC (kd, forward KL, the default T and α).

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
        cls = LOSSES[name]
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "setup")]
        for key in entry:
            if key not in allowed:
                raise EdgekdError(f"loss {name!r}: unknown argument {key!r}; it takes "
                                  f"{', '.join(['weight'] + allowed)}")
        check_term(name, entry)
        if "temperature" in entry:
            entry["temperature"] = hp.resolve_temperature(entry["temperature"], lambda: (
                teacher_params if teacher_params is not None else param_count(teacher_config),
                student_params if student_params is not None else param_count(student_config)))
        seen[name] = seen.get(name, 0) + 1
        key = name if seen[name] == 1 else f"{name}_{seen[name]}"
        terms.append((key, float(weight), cls(setup, **entry)))
    return LossSum(terms, causal)
