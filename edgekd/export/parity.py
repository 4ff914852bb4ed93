"""Compares an exported file with PyTorch on the same token ids and decides pass or fail."""

from __future__ import annotations

import numpy as np
import torch

from edgekd.export import runtime


def reference_logits(module: torch.nn.Module, rows: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [module(rows[i:i + 1]).float().numpy() for i in range(rows.shape[0])]


def exported_logits(path: str, rows: torch.Tensor) -> list[np.ndarray]:
    model = runtime.load(path)
    (name, _shape, dtype), = model.inputs
    return [model.run({name: rows[i:i + 1].numpy().astype(dtype)})[0] for i in range(rows.shape[0])]


def compare(ref: list[np.ndarray], got: list[np.ndarray], quantized: bool, min_top1: float) -> dict:
    """Float: max |diff| <= 1e-3 x max |logit|. int8: top-1 agreement >= min_top1."""
    r = np.concatenate([x.reshape(-1, x.shape[-1]) for x in ref])
    g = np.concatenate([x.reshape(-1, x.shape[-1]) for x in got]).astype(np.float32)
    if r.shape != g.shape:
        return {"max_abs_diff": None, "mean_abs_diff": None, "top1_agreement": 0.0, "logits_scale": None,
                "threshold": {}, "passed": False, "problem": f"output shape {g.shape} != PyTorch {r.shape}"}
    diff = np.abs(r - g)
    scale = float(np.abs(r).max())
    rec = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
           "top1_agreement": float((r.argmax(-1) == g.argmax(-1)).mean()), "logits_scale": scale,
           "positions": int(r.shape[0])}
    if quantized:
        rec["threshold"] = {"top1_agreement": min_top1}
        rec["passed"] = rec["top1_agreement"] >= min_top1
    else:
        rec["threshold"] = {"max_abs_diff": 1e-3 * scale}
        rec["passed"] = bool(np.isfinite(diff).all()) and rec["max_abs_diff"] <= 1e-3 * scale
    return rec
