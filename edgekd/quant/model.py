"""A Hugging Face causal LM whose weights go through a runtime's quantiser in every forward pass
(straight-through gradients), and the same model saved with its weights on that quantiser's grid.

    student = quant_aware(student, recipe_for_export("onnx-genai", "int4", student.config))
    ... train ...
    snap_model(student)      # plain nn.Linear/nn.Embedding again, weights = what the runtime will hold
"""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

from edgekd.errors import EdgekdError
from edgekd.quant.fake_quant import BLOCK, RECIPES, Recipe, fake_quant, fake_quant_activations, snap, unblocked_inputs


class FakeQuant(torch.nn.Module):
    """A parametrization: the weight as the runtime will hold it, gradients passed straight through."""

    def __init__(self, recipe: Recipe):
        super().__init__()
        self.recipe = recipe

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant(w, self.recipe)


def recipe_for_export(fmt: str, quantize: str, config) -> Recipe:
    """The recipe the `fmt` export quantises MODEL with at `quantize` (litert-lm int4 blockwise where every
    weight's input size is a multiple of 32, `unblocked_inputs`, as export.generative_export.recipe_for chooses)."""
    cfg = config if isinstance(config, dict) else config.to_dict()
    if (fmt, quantize) not in RECIPES:
        known = ", ".join(f"{f} {q}" for f, q in RECIPES if q != "int4b32")
        raise EdgekdError(f"no quantisation recipe for {fmt} {quantize}: known are {known}")
    if (fmt, quantize) == ("litert-lm", "int4") and not unblocked_inputs(cfg):
        return RECIPES[("litert-lm", "int4b32")]
    return RECIPES[(fmt, quantize)]


def recipe_words(fmt: str, quantize: str, config, unaligned_because: str | None = None) -> dict:
    """Which weight recipe a model of `config` gets in the `fmt` export at `quantize`, and why, for reports:
    {"format", "quantize", "recipe" (the runtime's name), "blockwise" (a scale per block of 32 input values,
    what phones ship, rather than per output channel), "grain" (that in words), "why"}. `unaligned_because`: why the model's sizes are
    not whole blocks (the student search's words), added where that decides the recipe."""
    recipe = recipe_for_export(fmt, quantize, config)
    bad = unblocked_inputs(config)
    sizes = ", ".join(f"{what} {n}" for what, n in bad.items())
    because = f" ({unaligned_because})" if unaligned_because else ""
    if recipe.block and not bad:
        why = f"every weight's input size is a multiple of the {recipe.block}-wide block"
    elif recipe.block:
        why = f"the last block of each weight input of {sizes} is padded with zeros{because}"
    elif (fmt, quantize) == ("litert-lm", "int4"):
        why = f"per output channel, not blockwise: the blockwise recipe needs every weight's input size to be a " \
              f"multiple of {BLOCK}, and the {sizes} {'is' if len(bad) == 1 else 'are'} not{because}"
    else:
        why = f"the runtime's {quantize} recipe has one scale per output channel"
    return {"format": fmt, "quantize": quantize, "recipe": recipe.name, "blockwise": recipe.block is not None,
            "grain": f"blocks of {recipe.block} input values" if recipe.block else "one scale per output channel",
            "why": why}


def quantized_modules(model: torch.nn.Module, recipe: Recipe) -> list[tuple[str, torch.nn.Module]]:
    """The modules whose weights the runtime quantises: every Linear (lm_head included), and the
    embedding tables where the recipe quantises them (LiteRT's, not onnxruntime's)."""
    kinds = (torch.nn.Linear, torch.nn.Embedding) if recipe.embeddings else (torch.nn.Linear,)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds) and m.weight.dim() == 2]


def quant_aware(model: torch.nn.Module, recipe: Recipe, activations: bool = True,
                weights: bool = True) -> torch.nn.Module:
    """MODEL (changed in place and returned) with each quantised module's weight through `recipe`'s fake
    quantisation and, with `activations`, each quantised Linear's input as the runtime quantises it at run
    time where it does (litert-lm, onnx-genai int8; fake_quant_activations). A tied lm_head/embedding pair stays
    one parameter: the lm_head reads it quantised, the embedding as the recipe says. `weights=False` leaves the
    weights as they are: a model already on the recipe's grid (snap_model) runs as its file does with the
    activations' quantisation alone, without requantising every weight in every forward pass."""
    hooks = []
    for _, module in quantized_modules(model, recipe):
        if weights and not parametrize.is_parametrized(module, "weight"):
            parametrize.register_parametrization(module, "weight", FakeQuant(recipe), unsafe=True)
        if activations and recipe.int8_activations and isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_pre_hook(
                lambda _m, args: (fake_quant_activations(args[0], recipe), *args[1:])))
    model.quant_recipe, model.quant_hooks = recipe, hooks
    return model


def snap_model(model: torch.nn.Module) -> torch.nn.Module:
    """MODEL (in place) with the fake quantisation removed and every quantised weight replaced by its
    values on the runtime's grid (a fixed point of the runtime's quantiser). Tied weights are snapped once."""
    recipe = getattr(model, "quant_recipe", None)
    if recipe is None:
        raise EdgekdError("snap_model needs a model from quant_aware(model, recipe)")
    done = set()
    with torch.no_grad():
        for _, module in quantized_modules(model, recipe):
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            if id(module.weight) not in done:
                module.weight.copy_(snap(module.weight, recipe))
                done.add(id(module.weight))
    for h in model.quant_hooks:
        h.remove()
    del model.quant_recipe, model.quant_hooks
    return model
