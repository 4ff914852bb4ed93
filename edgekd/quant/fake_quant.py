"""The edge runtimes' weight quantisers written once each in torch, so a student can be trained in the
numbers its exported file will hold (quantisation-aware distillation) and saved on their grid.

Each recipe is what the installed builder does, read from its source and checked bit for bit against it
(tests/quant/test_fake_quant.py):

- onnxruntime's MatMulNBits quantiser (onnxruntime_genai's builder, `int4`/`int8`, block_size=32,
  symmetric; MLAS `MlasQuantizeBlockwise`): per block of 32 input values of one output, the value of
  largest magnitude `m` (a negative one on a tie) sets scale = m / -2^(bits-1), so m itself is -8 (int4)
  or -128 (int8); q = round-half-away(w * (1/scale) + 2^(bits-1)) clamped to [0, 2^bits - 1], stored with
  that offset; the last block of an input size that is not a multiple of 32 is padded with zeros. Only
  MatMul weights (the lm_head included); the embedding table stays float.
- ai_edge_quantizer's `dynamic_wi4_afp32`, `dynamic_wi4b32_afp32`, `dynamic_wi8_afp32` (litert-torch's
  export_hf, min_max_uniform_quantize): symmetric, scale = max|w| / qmax (7 or 127; max|w| at least 1e-9)
  per output channel (`c`) or per block of 32 input values (`b32`, the scale then rounded to bfloat16 and stored as float16),
  q = round-half-even(w / scale) clamped to [-8, 7] (int4) or the narrow [-127, 127] (int8). Fully
  connected weights and embedding tables (per row) alike.

LiteRT and onnx-genai's int8 files then quantise activations at run time (XNNPACK's dynamic int8: per row,
asymmetric; MatMulNBits at accuracy_level=4: int8 blocks of 32 on x86) with their kernels' rounding and
accumulation order; quant_aware imitates those (int8_rows, int8_blocks), though no torch function reproduces
the kernels' accumulation bit for bit. onnx-genai's int4 files are built at accuracy_level=1: float32
activations times the dequantised weights, which the weights' fake quantisation alone reproduces to float
rounding on x86 and arm64 alike (edgekd.formats.ExportFormat.int8_activations says which file does which).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgekd.formats import export_format

BLOCK = 32


@dataclass(frozen=True)
class Recipe:
    """One runtime's weight quantiser: `rule` "ort" (MatMulNBits) or "litert" (ai_edge_quantizer),
    `bits`, `block` (input values per scale; None = one scale per output channel), whether embedding
    tables are quantised too, and the export format whose runtime runs it (which says whether activations
    are quantised at run time: edgekd.formats.ExportFormat.int8_activations)."""

    name: str
    rule: str
    bits: int
    block: int | None
    embeddings: bool
    fmt: str

    @property
    def int8_activations(self) -> bool:
        return export_format(self.fmt).quantises_activations(f"int{self.bits}")

    @property
    def activations(self) -> str:
        if not self.int8_activations:
            return ORT_FLOAT_ACT
        return LITERT_ACT if self.rule == "litert" else ORT_ACT

    def describe(self) -> str:
        grain = f"blocks of {self.block}" if self.block else "one scale per output channel"
        return f"{self.name}: symmetric int{self.bits} weights in {grain} ({self.rule} rule); activations {self.activations}"


ORT_FLOAT_ACT = "float32 (MatMulNBits accuracy_level=1)"
ORT_ACT = "int8 per block of 32, symmetric, at run time (accuracy_level=4)"
LITERT_ACT = "int8 per row, asymmetric, at run time (XNNPACK dynamic quantisation)"
RECIPES = {
    ("onnx-genai", "int4"): Recipe("onnx-genai int4", "ort", 4, BLOCK, False, "onnx-genai"),
    ("onnx-genai", "int8"): Recipe("onnx-genai int8", "ort", 8, BLOCK, False, "onnx-genai"),
    ("litert-lm", "int4"): Recipe("dynamic_wi4_afp32", "litert", 4, None, True, "litert-lm"),
    ("litert-lm", "int4b32"): Recipe("dynamic_wi4b32_afp32", "litert", 4, BLOCK, True, "litert-lm"),
    ("litert-lm", "int8"): Recipe("dynamic_wi8_afp32", "litert", 8, None, True, "litert-lm"),
}
BY_NAME = {r.name: r for r in RECIPES.values()}


def unblocked_inputs(config, block: int = BLOCK) -> dict[str, int]:
    """The weight input sizes of a model of `config` (a config of a family edgekd reads, or its arch_of dict)
    that are not a multiple of `block`, {what: size}, in the order hidden, FFN, attention; empty when every
    weight's input is whole blocks. The inputs: the hidden size (the q/k/v, gate/up and lm_head projections,
    the embedding rows), the FFN size (down_proj) and heads x head size (o_proj). LiteRT's blockwise recipe
    (dynamic_wi4b32_afp32) refuses a model with any; onnxruntime's MatMulNBits pads their last block."""
    from edgekd.models.arch import arch_of

    a = arch_of(config)
    sizes = {"hidden size": a["hidden_size"], "FFN size": a["intermediate_size"],
             "attention width (heads x head size)": a["num_attention_heads"] * a["head_dim"]}
    return {what: n for what, n in sizes.items() if n % block}


def _blocks(w: torch.Tensor, block: int | None) -> tuple[torch.Tensor, int]:
    """W [out, in] as [out, blocks, block] (zero-padded along the input), and the padding added."""
    w = w.detach().float()
    if block is None:
        return w.reshape(w.shape[0], 1, -1), 0
    pad = (-w.shape[1]) % block
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(w.shape[0], -1, block), pad


def _ort(b: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
    m = torch.where(hi.abs() > lo.abs(), hi, lo)
    scale = m / -(2 ** (bits - 1))
    recip = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    zp = float(2 ** (bits - 1))
    y = b * recip + zp
    q = torch.where(y - torch.floor(y) == 0.5, torch.ceil(y), torch.round(y))  # roundf: half away from zero
    return q.clamp(0, 2 ** bits - 1) - zp, scale


def _litert(b: torch.Tensor, bits: int, blockwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    qmax = 2 ** (bits - 1) - 1
    bound = b.abs().amax(-1, keepdim=True).clamp_min(1e-9)
    scale = bound / qmax
    if blockwise:  # stored as float16 with bfloat16's mantissa: a tiny scale underflows, maybe to 0
        scale = scale.to(torch.bfloat16).to(torch.float16).float()
    qmin = -qmax if bits >= 8 else -qmax - 1
    q = torch.round(b / torch.where(scale == 0, torch.ones_like(scale), scale)).clamp(qmin, qmax)
    return torch.where(scale == 0, torch.zeros_like(q), q), scale


def quantize(w: torch.Tensor, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The runtime's integers (as floats, [out, blocks, block] with any padding) and scales [out, blocks, 1]
    of a weight W [out, in]."""
    b, _ = _blocks(w, recipe.block)
    if recipe.rule == "ort":
        return _ort(b, recipe.bits)
    return _litert(b, recipe.bits, recipe.block is not None)


def dequantize(w: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """W [out, in] as the runtime holds it after quantising: integer x scale, in float32."""
    q, scale = quantize(w, recipe)
    return (q * scale).reshape(w.shape[0], -1)[:, :w.shape[1]].to(w.dtype)


def snap(w: torch.Tensor, recipe: Recipe, rounds: int = 4) -> torch.Tensor:
    """W moved onto the runtime's grid so that quantising it again gives back the same values (a fixed
    point): dequantize, repeated until nothing moves (a float32 scale max|w|/7 can shift by an ulp once)."""
    for _ in range(rounds):
        nxt = dequantize(w, recipe)
        if torch.equal(nxt, w):
            return w
        w = nxt
    return w


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, recipe):
        return dequantize(w, recipe)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake_quant(w: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """dequantize(W) forward, the identity backward (straight-through)."""
    return _StraightThrough.apply(w, recipe)


def int8_blocks(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """onnxruntime's run-time quantisation of a MatMulNBits input at accuracy_level=4 (MLAS CompInt8) on x86: per
    block of 32 values along the last dim, scale = max|x| / 127, q = round-half-even(x * (1/scale)); the
    dequantised values. Its matmul then equals the kernel's to float rounding (tests/quant)."""
    k = x.shape[-1]
    b = torch.nn.functional.pad(x, (0, (-k) % block)).reshape(*x.shape[:-1], -1, block)
    scale = b.abs().amax(-1, keepdim=True) / 127
    recip = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    return (torch.round(b * recip) * scale).reshape(*x.shape[:-1], -1)[..., :k]


def int8_rows(x: torch.Tensor) -> torch.Tensor:
    """XNNPACK's dynamic quantisation of a fully connected layer's input (LiteRT's dynamic_wi*_afp32 recipes):
    per row (token), asymmetric int8 over the row's range widened to hold 0: scale = (max - min) / 255, the zero
    point the nearer end's, rounded and clamped to [-128, 127]; q = round(x / scale) + zero point, clamped; the
    dequantised values."""
    lo = x.amin(-1, keepdim=True).clamp(max=0)
    hi = x.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / 255
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zmin, zmax = -128 - lo / safe, 127 - hi / safe
    zp = torch.round(torch.where((-128 + lo / safe) + (127 + hi / safe) > 0, zmin, zmax).clamp(-128, 127))
    q = (torch.round(x / safe) + zp).clamp(-128, 127)
    return torch.where(scale > 0, (q - zp) * scale, x)


class _StraightThroughActivations(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rule):
        return int8_blocks(x) if rule == "ort" else int8_rows(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake_quant_activations(x: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """X as the runtime quantises a matmul's input at run time (onnxruntime's int8 blocks of 32, int8_blocks;
    XNNPACK's int8 rows, int8_rows), straight-through backward. Only for recipes whose files quantise
    activations (`Recipe.int8_activations`; quant_aware hooks it in only there)."""
    return _StraightThroughActivations.apply(x, recipe.rule)


__all__ = ["BLOCK", "BY_NAME", "RECIPES", "Recipe", "dequantize", "fake_quant", "fake_quant_activations", "int8_rows",
           "int8_blocks", "quantize", "snap", "unblocked_inputs"]
