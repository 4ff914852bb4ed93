"""Loads a Hugging Face model directory as a module that maps token ids to logits and nothing else."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from edgekd.errors import EdgekdError


class LogitsOnly(torch.nn.Module):
    """Exporters need one tensor in and one out: no cache, no dict, no hidden states."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self._kw = {"use_cache": False} if hasattr(model.config, "use_cache") else {}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, **self._kw).logits


@dataclass
class LoadedModel:
    module: LogitsOnly
    kind: str  # "causal-lm" | "classifier"
    vocab_size: int
    max_len: int
    architecture: str


def load_for_export(model_dir: str | Path) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    d = Path(model_dir)
    if not d.is_dir():
        raise EdgekdError(f"model directory {d} does not exist: give a Hugging Face model directory "
                          f"(config.json + model.safetensors)")
    if not (d / "config.json").is_file():
        raise EdgekdError(f"{d} has no config.json: it is not a Hugging Face model directory")
    try:
        json.loads((d / "config.json").read_text())
        cfg = AutoConfig.from_pretrained(d)
    except (ValueError, OSError, KeyError) as e:
        raise EdgekdError(f"{d}/config.json cannot be read ({str(e).splitlines()[0][:200]}): "
                          f"re-save the model with save_pretrained") from None
    archs = cfg.architectures or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        kind, auto = "classifier", AutoModelForSequenceClassification
    elif any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or not archs:
        kind, auto = "causal-lm", AutoModelForCausalLM
    else:
        raise EdgekdError(f"{d}: architecture {archs[0]} is neither a causal LM nor a sequence classifier: "
                          f"edgekd exports only those")
    try:
        model = auto.from_pretrained(d, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise EdgekdError(f"cannot load weights from {d} ({str(e).splitlines()[0][:200]}): check "
                          f"model.safetensors is complete") from None
    model.eval()
    max_len = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
    return LoadedModel(LogitsOnly(model).eval(), kind, int(cfg.vocab_size), max_len, archs[0] if archs else "")
