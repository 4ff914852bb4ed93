"""A disk cache of encoded corpora: tokenising the built-in corpus costs seconds the default job can keep."""

from __future__ import annotations

from typing import Callable

import torch

from edgekd.io import atomic_path
from edgekd.settings import Settings


def cached_tokens(key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`compute()` once per key (a hash of data and tokenizer); later calls read the safetensors file."""
    from safetensors.torch import load_file, save_file

    settings = Settings.from_env()  # a pure speed-up: whether it is used never changes a result
    if settings.no_cache:
        return compute()
    path = settings.cache_dir / "tokens" / f"{key}.safetensors"
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


def texts_digest(texts: list[str]) -> str:
    """A digest of a list of texts, order and boundaries included."""
    import hashlib

    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", errors="surrogatepass")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def split_tokens(corpus, split: str, tokenizer) -> torch.Tensor:
    """One split ("train" or "validation") of a corpus, encoded with EOS joins and cached under a key
    of the split's name, the digest of that split's own texts and the tokenizer: the same texts split
    another way (a data set's own validation split, or the hash split of the same records) never share
    an entry, so held-out data is always the data the user held out."""
    from edgekd.data.batching import encode_texts
    from edgekd.data.tokenizer import tokenizer_hash

    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    texts = corpus.train if split == "train" else corpus.validation
    key = f"{split}-{texts_digest(texts)[:24]}-{tokenizer_hash(tokenizer)[:16]}"
    return cached_tokens(key, lambda: encode_texts(texts, tokenizer))
