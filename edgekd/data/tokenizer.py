"""A byte-level BPE tokenizer trained on the corpus: byte-level so any text round-trips."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

from edgekd.errors import EdgekdError

EOS = "<|endoftext|>"
PAD = "<|pad|>"
DEFAULT_VOCAB = 4096


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB):
    """Train a byte-level BPE and wrap it as a PreTrainedTokenizerFast (deterministic for fixed input)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    return wrap(tok)


def wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None,
                                   pad_token=PAD, model_max_length=1 << 30)


def load_tokenizer(directory: str | os.PathLike):
    """The tokenizer saved in a model directory; EdgekdError when there is none or it is corrupt."""
    from transformers import AutoTokenizer

    d = Path(directory)
    if (d / "tokenizer.json").is_file() and not (d / "tokenizer_config.json").is_file():
        try:
            from tokenizers import Tokenizer

            return wrap(Tokenizer.from_file(str(d / "tokenizer.json")))
        except Exception as e:
            raise EdgekdError(f"{d / 'tokenizer.json'} is corrupt ({type(e).__name__}): re-save the tokenizer") from e
    try:
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as e:
        raise EdgekdError(f"cannot load a tokenizer from {d} ({type(e).__name__}): save one there with tokenizer.save_pretrained") from e


def tokenizer_hash(tokenizer) -> str:
    """A hash of the vocabulary and merges: equal hashes mean the two tokenizers agree."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest() \
        if hasattr(tokenizer, "backend_tokenizer") else hashlib.sha256(
            repr(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def vocab_signature(tokenizer) -> str:
    """Hash of the token->id map only: tokenizers differing in settings but not ids still agree."""
    return hashlib.sha256(repr(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def max_token_id(tokenizer) -> int:
    """The largest id `tokenizer` can produce: its vocabulary and added tokens (not len(), which can
    undercount when ids have gaps)."""
    ids = list(tokenizer.get_vocab().values())
    return max(ids) if ids else -1


def check_fits_embedding(tokenizer, model, what: str = "teacher") -> None:
    """Every id the tokenizer can produce has a row in the model's input embedding, else one line now
    (the alternative is an IndexError deep in the first forward pass)."""
    from edgekd.models.vision import ImageInput

    if tokenizer is None or isinstance(tokenizer, ImageInput):  # an image classifier reads pixels, not tokens
        return
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None)
    if rows is None:
        return
    top = max_token_id(tokenizer)
    if top >= rows:
        vocab = getattr(model.config, "vocab_size", rows)
        raise EdgekdError(f"the {what}'s tokenizer produces token ids up to {top} but its embedding has {rows} rows "
                          f"(vocab_size {vocab}): the tokenizer does not belong to this model; save the model's own "
                          f"tokenizer with it")
