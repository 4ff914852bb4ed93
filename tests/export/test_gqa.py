"""One key/value head: litert-torch miscompiles repeat_kv + q @ k^T, so export routes GQA through
edgekd's grouped attention (edgekd/export/hf.py), which converts exactly."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_one_kv_head_passes_float_parity(tmp_path, fmt="tflite"):  # ONNX: the family matrix exports it too
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekd.export import export_model
    from edgekd.export.hf import GQA_ATTENTION, load_for_export

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64)
    d = tmp_path / "kv1"
    LlamaForCausalLM(cfg).save_pretrained(d)
    loaded = load_for_export(d)
    assert loaded.module.model.config._attn_implementation == GQA_ATTENTION
    rec = export_model(d, fmt=fmt, seq_len=16, out=tmp_path / f"kv1.{fmt}", show_progress=False)
    assert rec["passed"] and rec["max_abs_diff"] < 1e-5, rec


def test_grouped_attention_equals_eager_with_repeated_heads():
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from edgekd.export.hf import gqa_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 5, 8, generator=g) for h in (4, 1, 1))
    mask = torch.triu(torch.full((5, 5), torch.finfo(torch.float32).min), 1)[None, None].expand(2, 1, 5, 5)

    class M(torch.nn.Module):
        num_key_value_groups, training = 4, False

    ref, _ = eager_attention_forward(M(), q, k, v, mask, scaling=0.3)
    got, _ = gqa_attention(M(), q, k, v, mask, scaling=0.3)
    assert torch.allclose(ref, got, atol=1e-6)
    got_bool, _ = gqa_attention(M(), q, k, v, mask == 0, scaling=0.3, softcap=None)
    assert torch.allclose(ref, got_bool, atol=1e-6)
