"""Teacher and student with different tokenizers: the same text in both token sequences, and the
positions where both models have read exactly the same prefix.

A causal LM's logits at position i predict what follows its tokens 0..i. Where the student's token i
and the teacher's token j end at the same character of the text, both have read the same prefix, so
their next-token distributions answer the same question: those (i, j) pairs are where a
cross-tokenizer loss compares them. `vocab_map` pairs the student's and the teacher's ids of the same
tokens (what the token-alignment loss projects the teacher onto).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class TokenAlignment:
    """One batch in the teacher's tokens and the aligned positions of both (flat row indices)."""

    teacher_ids: Tensor       # [B, St] teacher token ids (padded)
    teacher_mask: Tensor      # [B, St] 1 on real tokens
    student_rows: Tensor      # [P] index into the student's [B * S] positions
    teacher_rows: Tensor      # [P] index into the teacher's [B * St] positions

    @property
    def pairs(self) -> int:
        return int(self.student_rows.numel())


def _ends(tokenizer, ids: list[int], text: str) -> list[int]:
    """Character offset where each token of `ids` ends in `text` (their decode), by prefix decodes; −1
    where a token ends inside a character (a multi-byte character split over tokens: its prefix decodes
    to a replacement character, not to a prefix of the text)."""
    prefixes = tokenizer.batch_decode([ids[: i + 1] for i in range(len(ids))], skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False)
    return [len(p) if text.startswith(p) else -1 for p in prefixes]


class CrossTokenizer:
    """Re-tokenises the student's batches for the teacher and aligns the two; also the shared vocabulary."""

    def __init__(self, student_tokenizer, teacher_tokenizer, max_teacher_len: Optional[int] = None):
        self.student, self.teacher, self.max_len = student_tokenizer, teacher_tokenizer, max_teacher_len
        self._map: Optional[Tensor] = None

    @property
    def vocab_map(self) -> Tensor:
        """[V_student] the teacher id of the same token, or −1: the same raw token string (two byte-level
        BPEs spell every byte alike), else the same decoded string."""
        if self._map is None:
            def index(tok):
                n = len(tok)
                raw = tok.convert_ids_to_tokens(list(range(n)))
                text = tok.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False)
                return raw, text
            t_raw, t_text = index(self.teacher)
            by_raw, by_text = {}, {}
            for i, (r, t) in enumerate(zip(t_raw, t_text)):
                by_raw.setdefault(r, i)
                if t and "\ufffd" not in t:
                    by_text.setdefault(t, i)
            s_raw, s_text = index(self.student)
            self._map = torch.tensor([by_raw.get(r, by_text.get(t, -1) if t and "\ufffd" not in t else -1)
                                      for r, t in zip(s_raw, s_text)], dtype=torch.long)
        return self._map

    def align(self, student_ids: Tensor, attention_mask: Optional[Tensor] = None) -> TokenAlignment:
        """The batch's text in teacher tokens, and the (student, teacher) positions that end together.

        Only student positions whose next token is real count (they are the rows a causal loss scores)."""
        B, S = student_ids.shape
        rows = []
        for b in range(B):
            n = int(attention_mask[b].sum()) if attention_mask is not None else S
            ids = student_ids[b, :n].tolist()
            text = self.student.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            t_ids = self.teacher(text, add_special_tokens=False)["input_ids"]
            if self.max_len:
                t_ids = t_ids[: self.max_len]
            s_end_at = {e: i for i, e in enumerate(_ends(self.student, ids, text)) if i < n - 1 and e >= 0}
            pairs = [(s_end_at[e], j) for j, e in enumerate(_ends(self.teacher, t_ids, text)) if e in s_end_at]
            rows.append((t_ids, pairs))
        St = max(1, max(len(t) for t, _ in rows))
        pad = self.teacher.pad_token_id if self.teacher.pad_token_id is not None else 0
        t_ids = torch.full((B, St), pad, dtype=torch.long)
        t_mask = torch.zeros(B, St, dtype=torch.long)
        s_rows, t_rows = [], []
        for b, (ids, pairs) in enumerate(rows):
            t_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            t_mask[b, : len(ids)] = 1
            s_rows += [b * S + i for i, _ in pairs]
            t_rows += [b * St + j for _, j in pairs]
        return TokenAlignment(t_ids, t_mask, torch.tensor(s_rows, dtype=torch.long),
                              torch.tensor(t_rows, dtype=torch.long))
