"""The published config.json values of open LLMs users bring as teachers (their Hugging Face model cards):
enough to plan a job without the weights (the search, the memory estimate) and to build random-weight
stand-ins of the real shapes for tests and benchmarks."""

from __future__ import annotations

PUBLISHED = {
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         tie_word_embeddings=True, max_position_embeddings=32768),
    "llama3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                        tie_word_embeddings=True, max_position_embeddings=131072),
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         tie_word_embeddings=True, max_position_embeddings=32768),
}


def random_teacher(name: str | dict, out, tokenizer_dir=None, seed: int = 0):
    """A random-weight causal LM of PUBLISHED[name]'s shape (or of `name`'s config fields, model_type among
    them) saved to `out` (with the tokenizer of `tokenizer_dir`, default the built-in teacher's: its ids are a
    subset of any real vocabulary); its size."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from edgekd.models.builtin import BUILTIN_DIR

    fields = dict(PUBLISHED[name] if isinstance(name, str) else name)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir or BUILTIN_DIR)
    # the end and start tokens a published model names, here the tokenizer's (its ids stand in for the real ones)
    fields.setdefault("eos_token_id", tok.eos_token_id)
    fields.setdefault("bos_token_id", tok.bos_token_id)
    cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())
