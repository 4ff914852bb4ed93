"""A tiny teacher built in seconds from local text: for tests and for trying edgekd offline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch


def make_tiny_teacher(out: str | os.PathLike, texts: Optional[list[str]] = None, *, vocab_size: int = 384,
                      hidden_size: int = 64, layers: int = 4, heads: int = 4, kv_heads: Optional[int] = None,
                      intermediate_size: int = 128, max_positions: int = 128, train_steps: int = 40,
                      seq_len: int = 32, seed: int = 0, classifier_labels: Optional[int] = None) -> Path:
    """Train a byte-level BPE on `texts` (default: a few stdlib files) and a small Llama briefly on them."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from edgekd.data.batching import BlockStream, encode_texts
    from edgekd.data.corpus import builtin_files
    from edgekd.data.tokenizer import train_tokenizer

    if texts is None:
        texts = [p.read_text(encoding="utf-8", errors="replace") for _, p in builtin_files()[:12]]
    tok = train_tokenizer(texts, vocab_size=vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                      intermediate_size=intermediate_size, max_position_embeddings=max_positions,
                      tie_word_embeddings=False, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    if classifier_labels:
        cfg.num_labels = classifier_labels
        model = LlamaForSequenceClassification(cfg)
    else:
        model = LlamaForCausalLM(cfg)
        if train_steps:
            stream = BlockStream(encode_texts(texts, tok), seq_len, 8, seed=seed)
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
            for _ in range(train_steps):
                b = stream.next()
                model(input_ids=b["input_ids"], labels=b["labels"]).loss.backward()
                opt.step()
                opt.zero_grad()
    model.eval()
    out = Path(out)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out
