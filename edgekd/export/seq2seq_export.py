"""Encoder-decoder (translation) export: ONNX in onnxruntime/Optimum's layout, kept only if greedy translation
through onnxruntime with the KV cache gives PyTorch `generate`'s greedy tokens.

The folder holds encoder_model.onnx, decoder_model.onnx (the first decoder step: it also returns the
cross-attention keys and values, computed once per sentence), decoder_with_past_model.onnx (one token with
past_key_values.N.decoder/encoder.key/value), config.json, generation_config.json and the tokenizer, with
Optimum's file, input and output names (what `optimum.onnxruntime.ORTModelForSeq2SeqLM` reads; not tested
here, optimum is not a dependency); edgekd's own `generative_runtime.Seq2SeqOnnxModel` runs it. torch.onnx (dynamo) exports each graph with dynamic batch,
source, target and past lengths; attention runs eager (SDPA's causal flag does not trace symbolically).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from edgekd.errors import EdgekdError, JobFailed
from edgekd.io import replace_dir, write_json

PARITY_SENTENCES = 8
FORMAT = "onnx-seq2seq"


class _Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _flat(cache, layers: int, cross: bool) -> list:
    """present.N.decoder.key/value (and .encoder. for the first step) in Optimum's order."""
    out = []
    for i in range(layers):
        out += [cache.self_attention_cache.layers[i].keys, cache.self_attention_cache.layers[i].values]
        if cross:
            out += [cache.cross_attention_cache.layers[i].keys, cache.cross_attention_cache.layers[i].values]
    return out


class _Decoder(torch.nn.Module):
    """The first decoder step(s): no past; returns logits and every layer's self- and cross-attention cache."""

    def __init__(self, model):
        super().__init__()
        self.model, self.layers = model, model.config.decoder_layers

    def forward(self, input_ids, encoder_attention_mask, encoder_hidden_states):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        out = self.model(decoder_input_ids=input_ids, attention_mask=encoder_attention_mask,
                         encoder_outputs=(encoder_hidden_states,), use_cache=True,
                         past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()))
        return (out.logits, *_flat(out.past_key_values, self.layers, cross=True))


class _DecoderWithPast(torch.nn.Module):
    """One decoder step on the cache: the cross-attention keys and values are given, not recomputed."""

    def __init__(self, model):
        super().__init__()
        self.model, self.layers = model, model.config.decoder_layers

    def forward(self, input_ids, encoder_attention_mask, *past):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache([(past[4 * i], past[4 * i + 1]) for i in range(self.layers)]),
                                    DynamicCache([(past[4 * i + 2], past[4 * i + 3]) for i in range(self.layers)]))
        # The encoder's states are read only through the cached cross-attention keys and values; the model still
        # wants a tensor there, so it gets zeros of the right shape.
        dummy = torch.zeros(*encoder_attention_mask.shape, self.model.config.d_model, dtype=past[2].dtype)
        out = self.model(decoder_input_ids=input_ids, attention_mask=encoder_attention_mask, encoder_outputs=(dummy,),
                         past_key_values=cache, use_cache=True)
        return (out.logits, *_flat(out.past_key_values, self.layers, cross=False))


def _names(layers: int, prefix: str, cross: bool = True) -> list[str]:
    return [f"{prefix}.{i}.{part}.{kv}" for i in range(layers) for part in (("decoder", "encoder") if cross else ("decoder",))
            for kv in ("key", "value")]


def _export(module, args, path: Path, inputs: list[str], outputs: list[str], dynamic) -> None:
    """One graph; its weights in the .onnx file itself unless protobuf's 2 GB limit forces a .data file."""
    from edgekd.export.convert_errors import conversion_error
    from edgekd.export.onnx_export import PROTOBUF_LIMIT_BYTES, quiet
    from edgekd.models.students import size_mb

    try:
        with quiet():
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=inputs, output_names=outputs,
                              dynamic_shapes=dynamic, optimize=True, verbose=False,
                              external_data=size_mb(module) * 1e6 > PROTOBUF_LIMIT_BYTES)
    except Exception as e:
        raise conversion_error(e, "torch.onnx (dynamo)", module, args) from e


def write_onnx(model, folder: Path) -> None:
    """The three graphs of `model` (eager attention, eval) into `folder`."""
    L = model.config.decoder_layers
    B, S = torch.export.Dim("batch", min=1, max=256), torch.export.Dim("encoder_sequence", min=1, max=4096)
    T, P = torch.export.Dim("decoder_sequence", min=2, max=4096), torch.export.Dim("past_sequence", min=1, max=4096)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]) % model.config.vocab_size
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    start = torch.full((2, 2), model.config.decoder_start_token_id)  # two tokens: a length-1 axis would specialise
    enc = _Encoder(model)
    _export(enc, (ids, mask), folder / "encoder_model.onnx", ["input_ids", "attention_mask"], ["last_hidden_state"],
            {"input_ids": {0: B, 1: S}, "attention_mask": {0: B, 1: S}})
    with torch.no_grad():
        hidden = enc(ids, mask)
        past = _Decoder(model)(start[:, :1], mask, hidden)[1:]
    _export(_Decoder(model), (start, mask, hidden), folder / "decoder_model.onnx",
            ["input_ids", "encoder_attention_mask", "encoder_hidden_states"], ["logits", *_names(L, "present")],
            ({0: B, 1: T}, {0: B, 1: S}, {0: B, 1: S}))
    past_shapes = tuple({0: B, 2: P} if n.split(".")[2] == "decoder" else {0: B, 2: S} for n in _names(L, "p"))
    _export(_DecoderWithPast(model), (start[:, :1], mask, *past), folder / "decoder_with_past_model.onnx",
            ["input_ids", "encoder_attention_mask", *_names(L, "past_key_values")],
            ["logits", *_names(L, "present", cross=False)], ({0: B}, {0: B, 1: S}, past_shapes))


def default_sources(n: int = PARITY_SENTENCES) -> list[str]:
    """Held-out English sentences of the built-in parallel corpus, spread over it."""
    from edgekd.data.parallel_corpus import load_parallel

    val = load_parallel("builtin").validation
    step = max(1, len(val) // n)
    return [s for s, _ in val[::step][:n]]


def export_seq2seq(model_dir, out=None, sources: list[str] | None = None, new_tokens: int = 32, *,
                   show_progress: bool = True) -> dict:
    """Export the encoder-decoder in MODEL_DIR to the folder OUT (default MODEL_DIR/../export/NAME-seq2seq/) and
    write OUT.json; the folder is put in place only if onnxruntime's greedy translations of `sources` (default:
    held-out sentences of the built-in corpus) with the KV cache are PyTorch `generate`'s, token for token."""
    from edgekd.checks import model_dir as check_model_dir, number, output_dir
    from edgekd.export.api import export_steps
    from edgekd.export.generative_runtime import Seq2SeqOnnxModel
    from edgekd.models.builtin import make_readable
    from edgekd.models.loading import SEQ2SEQ, load_model
    from edgekd.models.seq2seq import greedy_generation_config, translate

    number("--new-tokens", new_tokens, low=1, high=1024, integer=True)
    model_dir = check_model_dir(model_dir, "model directory")
    out = Path(out) if out else model_dir.resolve().parent / "export" / f"{model_dir.resolve().name}-seq2seq"
    output_dir(out)
    with export_steps(show_progress, f"export {model_dir.name} -> {out.name}", ["load", "convert", "parity"]) as step:
        model, tok, kind = load_model(model_dir, what="model")
        if kind != SEQ2SEQ:
            raise EdgekdError(f"{model_dir} is a {kind} model, not an encoder-decoder: export it with --format onnx, "
                              f"tflite, onnx-genai or litert-lm")
        model.set_attn_implementation("eager")
        sources = sources or default_sources()
        step("convert")
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
            folder = Path(tmp) / out.name
            folder.mkdir()
            write_onnx(model, folder)
            model.config.save_pretrained(str(folder))
            greedy_generation_config(model, new_tokens).save_pretrained(str(folder))
            tok.save_pretrained(str(folder))
            convert_s = time.time() - t0
            step("parity")
            rows, runtime = [], Seq2SeqOnnxModel(str(folder))
            for src in sources:
                ids = tok(src, truncation=True, max_length=model.config.max_position_embeddings)["input_ids"]
                ref = translate(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), new_tokens)[0]
                got = runtime.translate(ids, new_tokens)
                rows.append({"source": src, "source_tokens": len(ids), "pytorch": ref, "onnxruntime": got,
                             "match": ref == got})
            runtime.close()
            files = {f.name: f.stat().st_size / 1e6 for f in sorted(folder.glob("*.onnx*"))}
            matched = sum(r["match"] for r in rows)
            record = {"path": str(out), "format": FORMAT, "quantize": "none", "precision": "float32",
                      "passed": matched == len(rows), "tokens_match_share": matched / len(rows),
                      "parity": {"check": "greedy translation with onnxruntime and the KV cache equals PyTorch "
                                          "generate's greedy tokens", "sentences": len(rows),
                                 "max_new_tokens": new_tokens, "rows": rows},
                      "files": files, "size_mb": sum(files.values()), "convert_s": convert_s,
                      "inputs": {"encoder_model.onnx": ["input_ids", "attention_mask"],
                                 "decoder_model.onnx": ["input_ids", "encoder_attention_mask", "encoder_hidden_states"],
                                 "decoder_with_past_model.onnx": ["input_ids", "encoder_attention_mask",
                                                                  "past_key_values.N.{decoder,encoder}.{key,value}"]},
                      "model_dir": str(model_dir), "kind": SEQ2SEQ, "architecture": type(model).__name__,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            if record["passed"]:
                make_readable(folder)
                replace_dir(folder, out)
    write_json(Path(f"{out}.json"), record)
    if not record["passed"]:
        bad = next(r for r in rows if not r["match"])
        raise JobFailed(f"{out.name} failed parity: onnxruntime's greedy translation differs from PyTorch's on "
                        f"{len(rows) - matched} of {len(rows)} held-out sentences (first: {bad['source'][:60]!r}); "
                        f"record in {out}.json")
    return record
