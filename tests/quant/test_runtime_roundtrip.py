"""A quant_aware + snap_model student exported by the real builders: the weights read back from the files
(onnx MatMulNBits initializers; the .litertlm bundle's int4 TFLite tensors) are the snapped PyTorch
weights bit for bit, so the runtime's quantiser reproduced them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.export import export_generative
from edgekd.quant import quant_aware, recipe_for_export, snap_model

pytestmark = pytest.mark.slow
TEACHER = Path(__file__).resolve().parents[2] / "edgekd" / "models" / "builtin_teacher"
PROMPTS = [list(range(100, 120)), list(range(300, 316))]


def _snapped(fmt: str, d: Path) -> tuple[Path, dict]:
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
                        bos_token_id=0, eos_token_id=0, pad_token_id=1, initializer_range=0.2)
    model = T.LlamaForCausalLM(cfg)
    recipe = recipe_for_export(fmt, "int4", cfg)
    snap_model(quant_aware(model, recipe)).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TEACHER / f, d / f)
    return d, {k: v.numpy() for k, v in model.state_dict().items() if v.dim() == 2}


def _onnx_weights(folder: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(folder / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = []
    for node in (n for n in m.graph.node if n.op_type == "MatMulNBits"):
        a = {x.name: x.i for x in node.attribute}
        n, k, bs = a["N"], a["K"], a["block_size"]
        kb = (k + bs - 1) // bs
        packed = inits[node.input[1]].reshape(n, kb, -1)
        q = np.stack([packed & 15, packed >> 4], -1).reshape(n, kb, bs).astype(np.float32) - 8
        out.append((q * inits[node.input[2]].reshape(n, kb, 1)).reshape(n, -1)[:, :k])
    return out


def _litert_weights(path: Path) -> list[np.ndarray]:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgekd.export.generative_runtime import litertlm_sections

    out = []
    with open(path, "rb") as f:
        for kind, begin, end in litertlm_sections(str(path)):
            if kind != 3:
                continue
            f.seek(begin)
            m = fu.read_model(bytearray(f.read(end - begin)))
            tensors = m.subgraphs[0].tensors
            for t in tensors:
                raw = m.buffers[t.buffer].data
                if t.type != 17 or raw is None:  # INT4
                    continue
                raw, shape = np.asarray(raw, np.uint8), tuple(t.shape)
                v = np.stack([raw & 15, raw >> 4], -1).reshape(-1)[:int(np.prod(shape))].astype(np.int8)
                v = np.where(v > 7, v - 16, v).reshape(shape)
                out.append(v * _scales(t, tensors, m.buffers, shape))
    return out


def _scales(t, tensors, buffers, shape) -> np.ndarray:
    """A tensor's scales broadcast to its shape: per channel in its quantization, or blockwise in a float16
    tensor its BlockwiseQuantization details point to."""
    q = t.quantization
    if q.details is None:
        return np.asarray(q.scale, np.float32).reshape(shape[0], 1)
    st = tensors[q.details.scales]
    s = np.frombuffer(bytes(np.asarray(buffers[st.buffer].data, np.uint8)), np.float16).astype(np.float32)
    return np.repeat(s.reshape(tuple(st.shape)), q.details.blockSize, axis=1)


@pytest.mark.parametrize("fmt", ["onnx-genai", "litert-lm"])
def test_the_runtime_holds_the_snapped_weights(fmt, tmp_path):
    model_dir, weights = _snapped(fmt, tmp_path / "m")
    out = tmp_path / ("m.int4.litertlm" if fmt == "litert-lm" else "m-genai.int4")
    rec = export_generative(model_dir, fmt, "int4", out=out, prompts=PROMPTS, show_progress=False)
    read = _litert_weights(out) if fmt == "litert-lm" else _onnx_weights(out)
    assert len(read) >= 7
    pool = list(weights.values())
    if fmt == "onnx-genai":  # the builder fuses q, k and v into one MatMul
        for i in range(2):
            pool.append(np.concatenate([weights[f"model.layers.{i}.self_attn.{p}_proj.weight"] for p in "qkv"]))
    for w in read:
        assert any(p.shape == w.shape and np.array_equal(p, w) for p in pool)
    if fmt == "litert-lm":
        assert "dynamic_wi4b32_afp32" in rec["recipe"]
    assert rec["top1_agreement"] > 0.9
