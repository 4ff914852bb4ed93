"""Parallel corpora for encoder-decoder (translation) teachers: (source, target) sentence pairs.

`--data builtin` with a seq2seq teacher is the English -> German corpus shipped in
edgekd/data/gettext_en_de/ (built once by scripts/build_gettext_corpus.py from Debian's gettext
catalogues; sources and licences in its README.md). A user's data is a .jsonl or .jsonl.gz file of
{"source": ..., "target": ...} objects (a "split" of "validation" holds a pair out; otherwise 3% by a
hash of the source).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from edgekd.data.batching import PositionedStream
from edgekd.errors import EdgekdError

BUILTIN_PAIRS = Path(__file__).parent / "gettext_en_de" / "pairs.jsonl.gz"
VALIDATION_PERCENT = 3


@dataclass
class ParallelCorpus:
    train: list[tuple[str, str]]
    validation: list[tuple[str, str]]
    source: str
    digest: str


def load_parallel(data: str | os.PathLike | None) -> ParallelCorpus:
    """The pairs of `data` ('builtin', a .jsonl or .jsonl.gz file), split into train and validation."""
    path = BUILTIN_PAIRS if data is None or str(data) == "builtin" else Path(data)
    if not path.is_file() or not (path.name.endswith(".jsonl") or path.name.endswith(".jsonl.gz")):
        raise EdgekdError(f"a seq2seq teacher reads sentence pairs: pass --data a .jsonl or .jsonl.gz file of "
                          f'{{"source": ..., "target": ...}} lines, or builtin (got {path})')
    from edgekd.limits import read_bytes

    try:
        text = read_bytes(path, "data file").decode("utf-8")  # bounded; a .gz decompressed with the same bound
    except UnicodeDecodeError as e:
        raise EdgekdError(f"{path} is not readable UTF-8 JSON lines ({type(e).__name__}): re-write it") from e
    train, val, h = [], [], hashlib.sha256()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EdgekdError(f"{path}:{n} is not JSON ({e.msg}): each line must be an object with 'source' and "
                              f"'target'") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("source"), str) or not isinstance(obj.get("target"), str):
            raise EdgekdError(f"{path}:{n} has no string 'source' and 'target': each line must be "
                              f'{{"source": ..., "target": ...}}')
        src, tgt = obj["source"].strip(), obj["target"].strip()
        if not src or not tgt:
            continue
        h.update(hashlib.sha256(f"{src}\0{tgt}".encode()).digest())
        split = obj.get("split")
        held = split in ("validation", "valid", "val", "test") if split else \
            int.from_bytes(hashlib.sha256(src.encode()).digest()[:4], "big") % 100 < VALIDATION_PERCENT
        (val if held else train).append((src, tgt))
    if not val and len(train) >= 2:
        val.append(train.pop())
    if not train or not val:
        raise EdgekdError(f"{path} holds {len(train) + len(val)} sentence pairs: need at least 2 (one is held out)")
    return ParallelCorpus(train, val, "builtin" if path == BUILTIN_PAIRS else str(path), h.hexdigest())


def encode_pairs(pairs: list[tuple[str, str]], tokenizer, max_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """Source and target token ids, each with the tokenizer's own special tokens (Marian/BART: ... </s>), cut to
    max_len (keeping the end token)."""
    if not pairs:
        return [], []
    src = tokenizer([s for s, _ in pairs], truncation=True, max_length=max_len)["input_ids"]
    tgt = tokenizer(text_target=[t for _, t in pairs], truncation=True, max_length=max_len)["input_ids"]
    return src, tgt


def collate(src: list[list[int]], tgt: list[list[int]], pad_id: int, decoder_start_id: int) -> dict[str, torch.Tensor]:
    """A teacher-forced batch: padded sources and their mask, labels (-100 on padding) and the decoder's inputs
    (labels shifted right behind the decoder start token, as the model would make them from labels)."""
    s_len, t_len = max(map(len, src)), max(map(len, tgt))
    ids = torch.full((len(src), s_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(src), s_len), dtype=torch.long)
    labels = torch.full((len(tgt), t_len), -100, dtype=torch.long)
    for i, (s, t) in enumerate(zip(src, tgt)):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
        labels[i, :len(t)] = torch.tensor(t)
    from transformers.models.bart.modeling_bart import shift_tokens_right  # Marian's is the same function

    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "decoder_input_ids": shift_tokens_right(labels, pad_id, decoder_start_id)}


class PairStream(PositionedStream):
    """Sentence pairs in a seeded order reshuffled every epoch, each batch padded to its longest; the same
    one-integer position as the other streams, so a resumed run sees the same batches."""

    def __init__(self, src, tgt, batch_size: int, pad_id: int, decoder_start_id: int, seed: int = 0,
                 rank: int = 0, world: int = 1, position: int = 0):
        if batch_size % world:
            raise EdgekdError(f"batch size {batch_size} is not divisible by the {world} processes: pick a multiple")
        self.src, self.tgt, self.n = src, tgt, len(src)
        self.batch_size, self.seed, self.rank, self.world, self.position = batch_size, seed, rank, world, position
        self.pad_id, self.start_id = pad_id, decoder_start_id
        self._perm_epoch, self._perm = None, None

    def batch_at(self, position: int) -> dict[str, torch.Tensor]:
        idx = []
        for i in self.rank_slice(position):
            if self._perm_epoch != i // self.n:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + i // self.n)
                self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), i // self.n
            idx.append(int(self._perm[i % self.n]))
        return collate([self.src[j] for j in idx], [self.tgt[j] for j in idx], self.pad_id, self.start_id)


def tokenizer_for_pairs(pairs: list[tuple[str, str]], vocab_size: int):
    """One BPE over both languages (a shared vocabulary, as Marian shares its embeddings), trained with the
    `tokenizers` library: NFKC, Metaspace words, '</s>' appended to every sentence, '<pad>' and '<unk>'."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["</s>", "<unk>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator([t for pair in pairs for t in pair], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                   model_max_length=1 << 30)
