"""What the losses read from a model's outputs, and one forward that produces exactly that.

Any object with the attributes below (an HF ModelOutput, a dict, `LossInputs`) can be given to a
loss: `logits` [B,S,V] or [B,C]; `hidden_states` (embeddings output first, as HF returns them);
`attentions` ([B,H,S,S] per layer); for the "kd" loss on causal LMs (its fused_linear path),
`last_hidden_state` (the input of the LM head, after the final norm) plus `lm_head_weight` / `lm_head_bias`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from edgekd.errors import EdgekdError


@dataclass
class TopKLogits:
    """A teacher's logits kept sparsely: its k largest raw (T = 1) logits per row and their ids.

    Losses treat every other vocabulary entry as −inf, i.e. the teacher distribution at any T is
    renormalised over the kept entries. `.logits` returns itself so it can stand for a teacher output.
    """

    values: torch.Tensor   # [..., k] float
    indices: torch.Tensor  # [..., k] int (vocabulary ids)

    @property
    def logits(self) -> "TopKLogits":
        return self

    @property
    def k(self) -> int:
        return int(self.values.shape[-1])

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def dim(self) -> int:
        return self.values.dim()

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int) -> "TopKLogits":
        k = min(int(k), logits.shape[-1])
        values, indices = logits.detach().topk(k, dim=-1)
        return cls(values, indices)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "TopKLogits":
        return TopKLogits(fn(self.values), fn(self.indices))

    def check_vocab(self, vocab_size: int) -> None:
        if self.indices.numel() and int(self.indices.max()) >= vocab_size:
            raise EdgekdError(f"teacher top-k index {int(self.indices.max())} is outside the student vocabulary "
                              f"of {vocab_size}: teacher and student tokenizers must agree")

    def dense(self, vocab_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Full-vocabulary logits with −inf outside the kept entries (what the kernels consume)."""
        self.check_vocab(vocab_size)
        out = torch.full((*self.values.shape[:-1], vocab_size), float("-inf"), dtype=dtype,
                         device=self.values.device)
        return out.scatter(-1, self.indices.long(), self.values.to(dtype))


@dataclass
class LossInputs:
    """The fields a loss reads; `forward_for_loss` returns one, schemes build them for teachers."""

    logits: Any = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    last_hidden_state: Optional[torch.Tensor] = None
    lm_head_weight: Optional[torch.Tensor] = None
    lm_head_bias: Optional[torch.Tensor] = None
    teacher_loss: Optional[torch.Tensor] = None  # the online scheme's teacher CE: LossSum adds it to the total
    alignment: Any = None   # a teacher with another tokenizer: data.alignment.TokenAlignment of this batch
    vocab_map: Optional[torch.Tensor] = None  # and [V_student] its id of each student token (−1: none)


def mixture_logits(members: list, weights: list, temperature: float) -> torch.Tensor:
    """T · log Σ_i w_i softmax(t_i / T): logits whose softmax at T is exactly the weighted mixture."""
    T = float(temperature)
    terms = [torch.log_softmax(t.detach().float() / T, -1) + math.log(w) for t, w in zip(members, weights) if w > 0]
    return T * torch.logsumexp(torch.stack(terms), dim=0)


@dataclass
class TeacherMixture(LossInputs):
    """Several teachers' outputs as one: `logits` is their mixture at `temperature`.

    The members are kept so a response loss at another temperature re-mixes at its own T
    (the target then stays the weighted mean of distributions whatever T the run uses).
    """

    members: Optional[list] = None
    weights: Optional[list] = None
    temperature: float = 1.0

    def logits_at(self, temperature: float) -> torch.Tensor:
        if self.members is None or float(temperature) == float(self.temperature):
            return self.logits
        return mixture_logits(self.members, self.weights, temperature)


def get_field(out: Any, name: str) -> Any:
    """Attribute or mapping entry `name` of an output, None when absent."""
    if out is None:
        return None
    if isinstance(out, dict):
        return out.get(name)
    try:
        return getattr(out, name, None)
    except (KeyError, AttributeError):
        return None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


@dataclass(frozen=True)
class Needs:
    """What a forward must produce for a loss: mirrors the LossSum attributes of the same names."""

    needs_logits: bool = True
    needs_hidden_states: bool = False
    needs_attentions: bool = False
    needs_last_hidden: bool = False

    @classmethod
    def of(cls, obj: Any) -> "Needs":
        return cls(*(bool(getattr(obj, f, d)) for f, d in
                     (("needs_logits", True), ("needs_hidden_states", False),
                      ("needs_attentions", False), ("needs_last_hidden", False))))


def _full(param):
    """A head's parameter as one tensor. A frozen FSDP2 teacher's may be a shard again after forward (a
    DTensor): it is all-gathered. A trained one must not be (its gradient would bypass FSDP's averaging):
    `distill.parallel.shard` keeps the root's parameters gathered from forward to backward."""
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor):
        return param
    if param.requires_grad:
        raise EdgekdError("the LM head of a model being trained is still sharded after forward: shard its root "
                          "with fully_shard(..., reshard_after_forward=False) (edgekd.distill.parallel.shard does)")
    return param.full_tensor()


def model_inputs(batch: dict, device=None) -> dict:
    """The keyword arguments a model's forward takes from a batch: an image classifier's `pixel_values`, or
    `input_ids` with `attention_mask` (and a seq2seq batch's teacher-forced decoder inputs, without a cache)."""
    move = (lambda t: t) if device is None else (lambda t: t.to(device))
    if batch.get("pixel_values") is not None:
        return {"pixel_values": move(batch["pixel_values"])}
    kwargs = {"input_ids": move(batch["input_ids"])}
    if batch.get("attention_mask") is not None:
        kwargs["attention_mask"] = move(batch["attention_mask"])
    if batch.get("decoder_input_ids") is not None:  # a seq2seq model, teacher-forced on the reference target
        kwargs |= {"decoder_input_ids": move(batch["decoder_input_ids"]), "use_cache": False}
    return kwargs


def forward_for_loss(model: torch.nn.Module, batch: dict, needs: Any) -> LossInputs:
    """Run `model` on a batch (`model_inputs`: tokens, or an image classifier's pixels) producing what `needs`
    (a loss) reads.

    Calls the model itself (so DDP hooks still run); switches it to eager attention where the
    loss reads attention maps (fused attention returns none). When only the fused-linear path reads the
    output, full logits are skipped with HF's `logits_to_keep=1` and the final hidden state (the
    last entry of `hidden_states`, after the final norm in HF decoders) is returned with the LM
    head's weight, so `kernels.fused_linear_kd_loss` computes the logits chunk by chunk instead.
    """
    needs = needs if isinstance(needs, Needs) else Needs.of(needs)
    inner = unwrap(model)
    device = next(inner.parameters()).device
    kwargs = model_inputs(batch, device)
    want_hidden = needs.needs_hidden_states or needs.needs_last_hidden
    if want_hidden:
        kwargs["output_hidden_states"] = True
    if needs.needs_attentions:
        kwargs["output_attentions"] = True
        cfg = getattr(inner, "config", None)
        if getattr(cfg, "_attn_implementation", "eager") != "eager" and hasattr(inner, "set_attn_implementation"):
            inner.set_attn_implementation("eager")  # only eager attention returns the maps
    skip_logits = needs.needs_last_hidden and not needs.needs_logits
    if skip_logits and "logits_to_keep" in inspect.signature(inner.forward).parameters:
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    res = LossInputs(logits=None if skip_logits else get_field(out, "logits"),
                     hidden_states=get_field(out, "hidden_states") if want_hidden else None,
                     attentions=get_field(out, "attentions") if needs.needs_attentions else None)
    if needs.needs_last_hidden:
        head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
        if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor) or not res.hidden_states:
            raise EdgekdError(f"the 'kd' loss's fused_linear path needs a model with an LM head and hidden "
                              f"states; {type(inner).__name__} has none: set fused_linear false in the loss spec")
        if getattr(inner.config, "final_logit_softcapping", None) or getattr(inner.config, "logit_scale", None):
            raise EdgekdError(f"the 'kd' loss's fused_linear path cannot reproduce {type(inner).__name__}'s logit "
                              f"scaling: set fused_linear false in the loss spec")
        res.last_hidden_state = res.hidden_states[-1]
        res.lm_head_weight = _full(head.weight)
        res.lm_head_bias = _full(getattr(head, "bias", None))
        if not needs.needs_hidden_states:
            res.hidden_states = None
    return res
