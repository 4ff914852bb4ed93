"""Tiny models made here with save_pretrained, and their exports, built once per session."""

from __future__ import annotations

import pytest
import torch

SEQ = 16


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.1)
    d = tmp_path_factory.mktemp("models") / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=128, num_labels=3, initializer_range=0.1)
    d = tmp_path_factory.mktemp("models") / "tiny-bert"
    BertForSequenceClassification(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def exported(llama_dir, bert_dir, tmp_path_factory):
    """exported(model, fmt, quant) -> (path, record); each export happens at most once per session."""
    from edgekd.export import export_model

    out_dir = tmp_path_factory.mktemp("exports")
    cache: dict = {}
    dirs = {"llama": llama_dir, "bert": bert_dir}

    def get(model: str, fmt: str, quant: str):
        key = (model, fmt, quant)
        if key not in cache:
            out = out_dir / f"{model}.{quant}.{fmt}"
            rec = export_model(dirs[model], fmt=fmt, quantize=quant, seq_len=SEQ, out=out, show_progress=False)
            cache[key] = (out, rec)
        return cache[key]

    return get
