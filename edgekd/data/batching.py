"""Token-block batching with a position that is one integer, so a resumed run sees the same batches."""

from __future__ import annotations

from typing import Optional

import torch

from edgekd.errors import EdgekdError


def encode_texts(texts: list[str], tokenizer) -> torch.Tensor:
    """All texts tokenised and joined with EOS into one 1-D int64 tensor."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []  # a tokenizer fails on []
    flat: list[int] = []
    for seq in ids:
        flat.extend(seq)
        flat.append(eos)
    return torch.tensor(flat, dtype=torch.long)


class PositionedStream:
    """A stream whose whole state is `position`, the number of global batches consumed."""

    position: int
    batch_size: int
    rank: int
    world: int

    def rank_slice(self, position: int) -> range:
        per_rank = self.batch_size // self.world
        start = position * self.batch_size + self.rank * per_rank
        return range(start, start + per_rank)

    def batch_at(self, position: int) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def shuffled(self, position: int) -> list[int]:
        """This rank's example indices of global batch `position` over `self.n` examples, in a seeded order
        reshuffled every epoch (example i of epoch e is perm_e[i mod n])."""
        idx = []
        for i in self.rank_slice(position):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i // self.n)
            idx.append(int(torch.randperm(self.n, generator=g)[i % self.n]))
        return idx

    def next(self) -> dict[str, torch.Tensor]:
        b = self.batch_at(self.position)
        self.position += 1
        return b

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


class BlockStream(PositionedStream):
    """Non-overlapping blocks of `seq_len` tokens in a seeded order that is reshuffled every epoch.

    Global block i is block perm_e[i mod n] of epoch e = i // n. A global batch is `batch_size`
    consecutive global blocks; rank r of `world` takes its contiguous share. `position` counts the
    global batches consumed and is all the state there is.
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world: int = 1, position: int = 0):
        if batch_size % world:
            raise EdgekdError(f"batch size {batch_size} is not divisible by the {world} processes: pick a multiple")
        self.n = tokens.numel() // seq_len
        if self.n < 1:
            raise EdgekdError(f"the corpus has {tokens.numel()} training tokens, fewer than one sequence of --seq-len {seq_len}: "
                              f"add data or pass a smaller --seq-len")
        self.blocks = tokens[: self.n * seq_len].view(self.n, seq_len)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world = rank, world
        self.position = position
        self._perm_epoch: Optional[int] = None
        self._perm: Optional[torch.Tensor] = None

    def _perm_for(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def batch_at(self, position: int) -> dict[str, torch.Tensor]:
        idx = [int(self._perm_for(i // self.n)[i % self.n]) for i in self.rank_slice(position)]
        ids = self.blocks[idx]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}



def eval_blocks(tokens: torch.Tensor, seq_len: int, max_blocks: Optional[int] = None) -> torch.Tensor:
    """Held-out blocks in corpus order (no shuffling), optionally the first `max_blocks`, evenly spread."""
    n = tokens.numel() // seq_len
    if n < 1:
        raise EdgekdError(f"the validation split has {tokens.numel()} tokens, fewer than one sequence of --seq-len {seq_len}: "
                          f"add data or pass a smaller --seq-len")
    blocks = tokens[: n * seq_len].view(n, seq_len)
    if max_blocks is not None and n > max_blocks:
        pick = torch.linspace(0, n - 1, max_blocks).round().long()
        blocks = blocks[pick]
    return blocks


def encode_sentences(texts: list[str], tokenizer, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts as a classifier reads them, (input_ids, attention_mask) [n, seq_len]: with the tokenizer's own
    special tokens (BERT's [CLS] ... [SEP], whose [CLS] its pooler reads), cut to seq_len, padded on the right
    with the tokenizer's pad id."""
    if tokenizer.pad_token_id is None:
        raise EdgekdError("the teacher's tokenizer has no pad token, so sentences cannot be batched: set one "
                          "(tokenizer.pad_token = ...) and save it with the teacher")
    enc = tokenizer(texts, truncation=True, max_length=seq_len, padding="max_length", add_special_tokens=True)
    return torch.tensor(enc["input_ids"], dtype=torch.long), torch.tensor(enc["attention_mask"], dtype=torch.long)


def sentences_of_every_length(texts: list[str], tokenizer, seq_len: int, n: int) -> dict[str, torch.Tensor]:
    """Up to n of the texts, from the shortest to the longest in tokens (evenly spread over that order), encoded
    as a classifier reads them: {"input_ids", "attention_mask"} [n, seq_len], shortest first. What export
    parity runs on, so that short sentences padded to the exported length are checked, not only full ones."""
    ids, mask = encode_sentences(texts, tokenizer, seq_len)
    order = torch.sort(mask.sum(1), stable=True).indices
    pick = order[torch.linspace(0, len(order) - 1, min(n, len(order))).round().long().unique()]
    return {"input_ids": ids[pick], "attention_mask": mask[pick]}


class ClassificationStream(PositionedStream):
    """Labelled texts padded to `seq_len` (`encode_sentences`), in a seeded order reshuffled each epoch; same
    position idea."""

    def __init__(self, texts: list[str], labels: list[int], tokenizer, seq_len: int, batch_size: int,
                 seed: int = 0, rank: int = 0, world: int = 1, position: int = 0):
        if batch_size % world:
            raise EdgekdError(f"batch size {batch_size} is not divisible by the {world} processes: pick a multiple")
        self.ids, self.mask = encode_sentences(texts, tokenizer, seq_len)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.n = len(texts)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world, self.position = rank, world, position

    def batch_at(self, position: int) -> dict[str, torch.Tensor]:
        idx = self.shuffled(position)
        return {"input_ids": self.ids[idx], "attention_mask": self.mask[idx], "labels": self.labels[idx]}

