"""Distillation losses (response, feature, attention, relation): one registry, combined by weight.

    loss_fn = build_loss(spec, student_config, teacher_config)
    total, parts = loss_fn(student_out, teacher_out, labels, attention_mask=None)

Labels are the UNshifted HF labels (input ids, -100 on padding; [B] for classifiers); causal LMs
are shifted inside. See `outputs` for what the model outputs must carry.
"""

from edgekd.hyperparams import auto_temperature
from edgekd.losses.base import (LOSSES, LossTerm, LossView, Setup, aligns_tokenizers, hard_label_loss, is_causal,
                                register_loss, response_loss_names, takes_run_temperature)
from edgekd.losses.outputs import (LossInputs, Needs, TeacherMixture, TopKLogits, forward_for_loss, get_field,
                                   mixture_logits, unwrap)
from edgekd.losses import response as _response, intermediate as _intermediate  # noqa: F401  (registration)
from edgekd.losses import cross_vocab as _cross_vocab  # noqa: F401  (registration)
from edgekd.losses.combine import DEFAULT_SPEC, LossSum, build_loss

__all__ = ["LOSSES", "register_loss", "build_loss", "LossSum", "LossTerm", "LossView", "Setup", "TopKLogits",
           "LossInputs", "Needs", "TeacherMixture", "mixture_logits", "get_field", "forward_for_loss", "unwrap",
           "auto_temperature", "hard_label_loss", "is_causal", "DEFAULT_SPEC", "takes_run_temperature",
           "response_loss_names", "aligns_tokenizers"]
