"""Corpora (built-in stdlib sources and user data), the BPE tokenizer, and resumable token batching."""

from edgekd.data.batching import BlockStream, ClassificationStream, encode_texts, eval_blocks
from edgekd.data.corpus import Corpus, load_builtin, load_corpus, load_user
from edgekd.data.tokenizer import load_tokenizer, train_tokenizer

__all__ = ["BlockStream", "ClassificationStream", "Corpus", "encode_texts", "eval_blocks", "load_builtin",
           "load_corpus", "load_user", "load_tokenizer", "train_tokenizer"]
