"""Each fake-quant recipe against the runtime's own quantiser, on the same weights: onnxruntime's MLAS
blockwise quantiser (what MatMulNBitsQuantizer calls) and ai_edge_quantizer's min/max uniform quantiser
(what litert-torch's export calls). Integers and scales must be equal, dequantised weights bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekd.quant.fake_quant import BY_NAME, RECIPES, dequantize, fake_quant, quantize, snap


def _weights(out=24, inp=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * 0.05
    w[0, 3], w[1, 40], w[2, :32] = -0.5, 0.6, 0.0  # an outlier of each sign, an all-zero block
    w[3, 0], w[3, 1] = 0.25, -0.25                   # a tie in magnitude
    w[5, 32:64] *= 1e-3                              # a block whose scale is a float16 subnormal
    w[4, :8] = torch.tensor([-0.8, 0.25, 0.35, -0.25, 0.05, 0.15, 0.75, -0.45])  # exact half-steps at scale 0.1
    return w


def _ort_reference(w: torch.Tensor, bits: int) -> np.ndarray:
    """onnxruntime's dequantised weight [out, in]: its packed integers (offset 2^(bits-1)) x its scales."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    b = w.T.contiguous().numpy()  # MatMul's B: [K = in, N = out]
    k, n = b.shape
    kb = (k + 31) // 32
    b = np.pad(b, ((0, kb * 32 - k), (0, 0)))
    blob = 32 * bits // 8
    packed = np.zeros((n, kb, blob), np.uint8)
    zp = np.zeros((n, (kb + (8 // bits) - 1) // (8 // bits)), np.uint8)
    scales = np.zeros((n, kb), np.float32)
    (quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits)(packed, b, scales, zp, 32, n, kb * 32, True)
    if bits == 4:
        q = np.stack([packed & 15, packed >> 4], -1).reshape(n, kb, 32).astype(np.float32) - 8
    else:
        q = packed.reshape(n, kb, 32).astype(np.float32) - 128
    return (q * scales[..., None]).reshape(n, -1)[:, :k]


@pytest.mark.parametrize("bits", [4, 8])
def test_ort_recipe_is_mlas_blockwise(bits):
    w = _weights()
    ours = dequantize(w, RECIPES[("onnx-genai", f"int{bits}")]).numpy()
    assert np.array_equal(ours, _ort_reference(w, bits))


def _litert_reference(w: torch.Tensor, bits: int, block: int | None) -> np.ndarray:
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uq

    x = w.numpy()
    grain = qtyping.QuantGranularity.BLOCKWISE_32 if block else qtyping.QuantGranularity.CHANNELWISE
    view = x.reshape(x.shape[0], -1, block) if block else x[:, None, :]
    _, scale = uq.tensor_zp_scale_from_min_max(view.min(-1), view.max(-1), bits, True, grain)
    params = qtyping.UniformQuantParams(num_bits=bits, quantized_dimension=1 if block else 0,
                                        scale=scale if block else scale.reshape(-1, 1),
                                        zero_point=np.zeros(scale.shape if block else (x.shape[0], 1), np.int32),
                                        symmetric=True, block_size=block or 0)
    q = uq.uniform_quantize(x, params, is_blockwise_quant=bool(block))
    return q.astype(np.float32) * (np.repeat(scale, block, 1) if block else scale.reshape(-1, 1))


@pytest.mark.parametrize("name,bits,block", [("dynamic_wi4_afp32", 4, None), ("dynamic_wi4b32_afp32", 4, 32),
                                             ("dynamic_wi8_afp32", 8, None)])
def test_litert_recipe_is_ai_edge_quantizer(name, bits, block):
    w = _weights(inp=96)
    assert np.array_equal(dequantize(w, BY_NAME[name]).numpy(), _litert_reference(w, bits, block))


@pytest.mark.parametrize("recipe", list(RECIPES.values()), ids=lambda r: r.name)
def test_snapped_weights_are_a_fixed_point(recipe):
    w = _weights(inp=96)
    s = snap(w, recipe)
    assert torch.equal(dequantize(s, recipe), s)
    q, _ = quantize(s, recipe)
    assert q.abs().max() <= 2 ** (recipe.bits - 1)


def test_fake_quant_is_straight_through():
    w = _weights().requires_grad_()
    recipe = RECIPES[("onnx-genai", "int4")]
    (fake_quant(w, recipe) * 3.0).sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 3.0))
    assert torch.equal(fake_quant(w, recipe).detach(), dequantize(w, recipe))
