"""Quantisation-aware students: the edge runtimes' weight quantisers in torch (fake_quant) and any
Hugging Face causal LM put through one of them (quant_aware), then saved on the runtime's grid (snap_model)."""

from edgekd.quant.fake_quant import RECIPES, Recipe, dequantize, fake_quant, quantize, snap
from edgekd.quant.model import quant_aware, quantized_modules, recipe_for_export, recipe_words, snap_model

__all__ = ["RECIPES", "Recipe", "dequantize", "fake_quant", "quant_aware", "quantize", "quantized_modules",
           "recipe_for_export", "recipe_words", "snap", "snap_model"]
