"""Loads a Hugging Face model directory as a module that maps token ids to logits and nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgekd.errors import EdgekdError
from edgekd.models.loading import CLASSIFIER, load_model, read_config_dict


GQA_ATTENTION = "edgekd_gqa"


def gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
    """Eager attention with grouped-query attention computed per key/value group, without repeating K and V.

    litert-torch miscompiles the usual `repeat_kv` (expand/reshape, or repeat/repeat_interleave) of a single
    key/value head followed by `q @ k.transpose`: with one KV head the TFLite scores differ from PyTorch's
    by up to 8 (2 and more heads are exact). Folding the query heads of a group into the row axis
    (q [B, kv, n*S, D] @ k [B, kv, D, T]) is the same arithmetic, converts exactly, and moves no copies of K/V.
    """
    b, h, s, d = query.shape
    kv, t = key.shape[1], key.shape[2]
    n = h // kv
    if scaling is None:
        scaling = d ** -0.5
    scores = torch.matmul(query.reshape(b, kv, n * s, d), key.transpose(2, 3)).reshape(b, h, s, t) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :t]
        scores = scores + (torch.where(mask, 0.0, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool else mask)
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    out = torch.matmul(probs.reshape(b, kv, n * s, t), value).reshape(b, h, s, value.shape[-1])
    return out.transpose(1, 2).contiguous(), probs


def use_gqa_attention(model: torch.nn.Module) -> bool:
    """Route a model with fewer key/value heads than query heads through `gqa_attention`; False where the
    model does not dispatch through transformers' attention interface (it is then left as it is)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    cfg = model.config
    heads, kv = getattr(cfg, "num_attention_heads", None), getattr(cfg, "num_key_value_heads", None)
    if not heads or not kv or kv >= heads or not getattr(model, "_can_set_attn_implementation", lambda: False)():
        return False
    AttentionInterface.register(GQA_ATTENTION, gqa_attention)
    AttentionMaskInterface.register(GQA_ATTENTION, eager_mask)
    model.set_attn_implementation(GQA_ATTENTION)
    return model.config._attn_implementation == GQA_ATTENTION


class LogitsOnly(torch.nn.Module):
    """Exporters need plain tensors in and one out: no cache, no dict, no hidden states. A causal LM takes
    `input_ids` over a full window; a classifier also takes `attention_mask`, so a sentence padded to the
    exported length gives the logits of the sentence alone (its padding is masked out)."""

    def __init__(self, model: torch.nn.Module, with_mask: bool = False):
        super().__init__()
        self.model = model
        self.input_names = ("input_ids", "attention_mask") if with_mask else ("input_ids",)
        self._kw = {"use_cache": False} if hasattr(model.config, "use_cache") else {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        kw = dict(self._kw)
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask
        return self.model(input_ids=input_ids, **kw).logits


class PixelsToLogits(torch.nn.Module):
    """An image classifier's logits graph: `pixel_values` [1, C, H, W] (the model's normalised input) -> logits."""

    input_names = ("pixel_values",)

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


@dataclass
class LoadedModel:
    module: torch.nn.Module  # LogitsOnly, or an image classifier's PixelsToLogits
    kind: str  # models.loading.CAUSAL_LM | CLASSIFIER
    vocab_size: int
    max_len: int
    architecture: str
    pad_token_id: int = 0
    image: Any = None  # an image classifier's models.vision.ImageInput (its input's size and normalisation)

    @property
    def input_names(self) -> tuple:
        return self.module.input_names


def load_for_export(model_dir: str | Path) -> LoadedModel:
    """MODEL_DIR's model as token ids (and a classifier's attention mask) -> logits, read and checked the way
    every edgekd model is (models.loading: only causal LMs and sequence classifiers have a logits graph)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    d = Path(model_dir)
    cfg = read_config_dict(d)
    from edgekd.models.seq2seq import is_seq2seq

    if is_seq2seq(cfg):
        raise EdgekdError(f"{d} is an encoder-decoder ({cfg['model_type']}), which has no single logits graph: "
                          f"export it with --format onnx-seq2seq")
    model, image, kind = load_model(d, with_tokenizer=False, what="model")
    archs = cfg.get("architectures") or []
    if image is not None:  # an image classifier (models/vision.py): pixels in, no sequence axis
        return LoadedModel(PixelsToLogits(model).eval(), kind, 0, 0, archs[0] if archs else "", image=image)
    use_gqa_attention(model)
    max_len = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    pad = getattr(model.config, "pad_token_id", None)
    return LoadedModel(LogitsOnly(model, with_mask=kind == CLASSIFIER).eval(), kind, int(model.config.vocab_size),
                       max_len, archs[0] if archs else "", 0 if pad is None else int(pad))
