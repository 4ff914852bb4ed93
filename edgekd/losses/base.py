"""The loss registry, the view of one batch every term reads, and helpers shared by the terms."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.losses.outputs import TopKLogits, get_field

IGNORE_INDEX = -100
LOSSES: dict[str, type] = {}


def register_loss(name: str):
    """Class decorator: make a LossTerm buildable by `name` from a config spec."""
    def deco(cls):
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        params = inspect.signature(cls.__init__).parameters
        if getattr(cls, "takes_temperature", False) and not {"temperature", "alpha"} <= set(params):
            raise ValueError(f"loss {name!r} sets takes_temperature but its __init__ takes no temperature and alpha")
        cls.name = name
        LOSSES[name] = cls
        return cls
    return deco


def takes_run_temperature(name: str) -> bool:
    """Whether the registered loss NAME is a response loss that takes the run's temperature and alpha
    (its class sets `takes_temperature = True`), so a new response loss gets them without a list to edit."""
    cls = LOSSES.get(name)
    return bool(cls is not None and getattr(cls, "takes_temperature", False))


def aligns_tokenizers(names) -> bool:
    """Whether one of the registered losses NAMES compares a teacher and a student with different tokenizers
    (its class sets `needs_alignment`): then the student keeps its own vocabulary and the run aligns the two."""
    return any(getattr(LOSSES.get(n), "needs_alignment", False) for n in names)


def response_loss_names() -> tuple[str, ...]:
    """The registered losses that take the run's temperature and alpha, in registration order."""
    return tuple(n for n in LOSSES if takes_run_temperature(n))


@dataclass
class Setup:
    """What a term may look at when it is built: both configs and whether logits need shifting."""

    student_config: Any
    teacher_config: Any
    causal: bool


class LossTerm(nn.Module):
    """One unweighted loss term; forward(view) -> scalar float32 tensor."""

    name = ""
    takes_temperature = False  # a response loss: True, and it takes `temperature` and `alpha` (the run's by default)
    needs_teacher = True
    needs_logits = False
    needs_hidden_states = False
    needs_attentions = False
    needs_last_hidden = False
    needs_alignment = False  # reads a teacher with another tokenizer at aligned positions (losses/cross_vocab.py)

    def forward(self, view: "LossView") -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class LossView:
    """One batch as the terms see it. `labels` are UNshifted (HF convention); terms shift them."""

    student_out: Any
    teacher_out: Any
    labels: Optional[torch.Tensor]
    attention_mask: Optional[torch.Tensor]
    causal: bool

    def student(self, field: str, loss: str):
        return _require(self.student_out, field, loss, "student")

    def teacher(self, field: str, loss: str):
        if self.teacher_out is None:
            raise EdgekdError(f"loss {loss!r} needs a teacher output but the scheme gave none")
        if isinstance(self.teacher_out, TopKLogits) and field != "logits":
            raise EdgekdError(f"loss {loss!r} needs teacher {field}, but a top-k logit cache stores only logits: "
                              f"drop the cache or the {loss!r} loss")
        return _require(self.teacher_out, field, loss, "teacher")

    def token_mask(self, batch: int, seq: int, device) -> torch.Tensor:
        """[B,S] bool of real tokens: the attention mask, else labels != -100, else all."""
        if self.attention_mask is not None:
            return self.attention_mask.to(device).bool()
        if self.labels is not None and self.labels.dim() == 2 and tuple(self.labels.shape) == (batch, seq):
            return self.labels.to(device) != IGNORE_INDEX
        return torch.ones(batch, seq, dtype=torch.bool, device=device)


def _require(out, field: str, loss: str, who: str):
    value = get_field(out, field)
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0):
        hint = {"hidden_states": "run it with output_hidden_states=True",
                "attentions": "run it with output_attentions=True and attn_implementation='eager'",
                "last_hidden_state": "run it through edgekd.losses.forward_for_loss",
                "lm_head_weight": "run it through edgekd.losses.forward_for_loss"}.get(field, "")
        raise EdgekdError(f"loss {loss!r} needs the {who}'s {field}, which its output lacks" + (f": {hint}" if hint else ""))
    return value


def response_rows(view: LossView, student_logits, teacher_logits, vocab: Optional[int] = None):
    """Student rows [N,V], teacher rows (tensor or TopKLogits) and labels [N]: shifted for causal LMs.

    The student's rows may be its final hidden states [N,H] instead, with `vocab` its head's vocabulary."""
    s, t, labels = student_logits, teacher_logits, view.labels
    if t is not None and tuple(t.shape[:-1]) != tuple(s.shape[:-1]):
        raise EdgekdError(f"teacher output shape {tuple(t.shape)} does not match the student's {tuple(s.shape)}: "
                          f"they must see the same batch")
    if labels is not None and tuple(labels.shape) != tuple(s.shape[:-1]):
        raise EdgekdError(f"labels of shape {tuple(labels.shape)} do not fit logits of shape {tuple(s.shape)}: "
                          f"give [B,S] token labels for LMs, [B] class labels for classifiers")
    if s.dim() == 3 and view.causal:
        s = s[:, :-1]
        t = None if t is None else (t.map(lambda x: x[:, :-1]) if isinstance(t, TopKLogits) else t[:, :-1])
        labels = None if labels is None else labels[:, 1:]
    s = s.reshape(-1, s.shape[-1])
    V = vocab or s.shape[-1]
    if isinstance(t, TopKLogits):
        t = t.map(lambda x: x.reshape(-1, x.shape[-1]))
    elif t is not None:
        if t.shape[-1] != V:
            raise EdgekdError(f"teacher vocabulary ({t.shape[-1]}) differs from the student's ({V}): "
                              f"teacher and student tokenizers must agree")
        t = t.reshape(-1, V)
    if labels is not None:
        labels = labels.reshape(-1).to(s.device).long()
    return s, t, labels


def hard_label_loss(logits: torch.Tensor, labels: torch.Tensor, causal: bool,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over counted rows (0 when none), shifting token labels for causal LMs."""
    if logits.dim() == 3 and causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    s = logits.reshape(-1, logits.shape[-1]).float()
    lab = labels.reshape(-1).to(s.device).long()
    total = nn.functional.cross_entropy(s, lab, ignore_index=ignore_index, reduction="sum")
    return total / (lab != ignore_index).sum().clamp(min=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


# ---- configs ------------------------------------------------------------------------------------

def config_int(config, *names: str, what: str) -> int:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int):
            return v
    raise EdgekdError(f"the model config ({type(config).__name__}) has no {what} ({' / '.join(names)})")


def hidden_size(config) -> int:
    return config_int(config, "hidden_size", "d_model", "n_embd", "dim", what="hidden size")


def num_layers(config) -> int:
    return config_int(config, "num_hidden_layers", "num_layers", "n_layer", "n_layers", what="layer count")


def is_causal(config) -> bool:
    """Whether logits at position t predict token t+1 (so labels are shifted inside the loss)."""
    archs = getattr(config, "architectures", None) or []
    if any("CausalLM" in a or "LMHead" in a for a in archs):
        return True
    if any(x in a for a in archs for x in ("Classification", "MaskedLM", "QuestionAnswering")):
        return False
    if getattr(config, "is_decoder", False):
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    mt = getattr(config, "model_type", None)
    return mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


# ---- layer maps -----------------------------------------------------------------------------------

def parse_layer_map(layer_map, default: dict[int, int], n_student: int, n_teacher: int, loss: str,
                    what: str) -> dict[int, int]:
    """{"1": 3} / {1: 3} / [[1, 3]] -> {1: 3}, indices checked against the counts (negatives from the end)."""
    if layer_map is None:
        return dict(default)
    items = layer_map.items() if isinstance(layer_map, dict) else layer_map
    out = {}
    try:
        for s, t in items:
            s, t = int(s), int(t)
            s = s + n_student if s < 0 else s
            t = t + n_teacher if t < 0 else t
            if not (0 <= s < n_student and 0 <= t < n_teacher):
                raise EdgekdError(f"loss {loss!r}: layer_map entry {s}->{t} is out of range: the student has "
                                  f"{n_student} {what} (0..{n_student - 1}), the teacher {n_teacher}")
            out[s] = t
    except (TypeError, ValueError) as e:
        raise EdgekdError(f"loss {loss!r}: layer_map must map student to teacher indices, "
                          f"like {{\"1\": 3}}; got {layer_map!r} ({e})") from e
    if not out:
        raise EdgekdError(f"loss {loss!r}: layer_map is empty")
    return out


def even_hidden_map(ls: int, lt: int) -> dict[int, int]:
    """Hidden-state indices (0 = embeddings): student i -> teacher round(i·Lt/Ls), so 0->0 and last->last."""
    return {i: int(round(i * lt / ls)) for i in range(ls + 1)}


def even_layer_map(ls: int, lt: int) -> dict[int, int]:
    """Layer indices (0-based): student i -> teacher (i+1)·Lt/Ls − 1, so the last maps to the last."""
    return {i: max(0, (i + 1) * lt // ls - 1) for i in range(ls)}
