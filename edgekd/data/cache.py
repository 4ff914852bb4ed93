"""A disk cache of encoded corpora: tokenising the built-in corpus costs seconds the default job can keep."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from edgekd.io import atomic_path
from edgekd.settings import cache_dir


def cached_tokens(key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`compute()` once per key (a hash of data and tokenizer); later calls read the safetensors file."""
    from safetensors.torch import load_file, save_file

    if os.environ.get("EDGEKD_NO_CACHE"):
        return compute()
    path = cache_dir() / "tokens" / f"{key}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["tokens"]
        except Exception:
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed, never trusted
    tokens = compute()
    try:
        with atomic_path(path) as tmp:
            save_file({"tokens": tokens.contiguous()}, str(tmp))
    except OSError:
        pass  # a read-only home is no reason to fail the run
    return tokens
