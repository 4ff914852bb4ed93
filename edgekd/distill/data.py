"""A run's data: the corpus encoded with the teacher's tokenizer, as a resumable training stream
and fixed held-out batches (the same for every model the run evaluates)."""

from __future__ import annotations

from typing import Optional

import torch

from edgekd.errors import EdgekdError
from edgekd.models.loading import CLASSIFIER, SEQ2SEQ
from edgekd.models.vision import ImageInput

EVAL_BATCH_LM, EVAL_BATCH_CLASSIFIER = 8, 16
HELDOUT_TRANSLATIONS = 64  # held-out pairs each model translates for chrF


def remap_to_teacher(corpus, classes: Optional[list[str]], where: str) -> None:
    """The corpus's labels (indices into its label_values) become the teacher's class ids, or one line."""
    from edgekd.data.labels import map_labels

    if classes is None:
        return
    mapping = map_labels(corpus.label_values, classes, where)
    ids = [mapping[v] for v in corpus.label_values]
    corpus.train_labels = [ids[i] for i in corpus.train_labels]
    corpus.validation_labels = [ids[i] for i in corpus.validation_labels]
    corpus.label_names = list(classes)


class RunData:
    """`stream(position, seed)` gives the training stream from a batch position; `eval_batches` are the
    held-out batches; `heldout_ids` the held-out token rows ([n, seq_len], causal LMs; None for classifiers and
    seq2seq); `heldout_pairs` the held-out (source, reference) pairs that seq2seq models translate for chrF."""

    def __init__(self, cfg, tokenizer, kind: str, rank: int, world: int, max_positions: Optional[int],
                 decoder_start: Optional[int] = None, classes: Optional[list[str]] = None):
        from edgekd.data.corpus import load_corpus

        self.classes = classes  # a classifier teacher's class names (edgekd.data.labels.teacher_classes)
        self.seq_len = min(cfg.seq_len, max_positions or cfg.seq_len)
        self.batch_size, self.seed, self.rank, self.world = cfg.batch_size, cfg.seed, rank, world
        self.heldout_pairs: list = []
        if kind == SEQ2SEQ:
            self._seq2seq(cfg, tokenizer, decoder_start)
            return
        if isinstance(tokenizer, ImageInput):  # an image classifier's reader (models/vision.py), not a tokenizer
            self._images(cfg, tokenizer)
            return
        corpus = load_corpus(cfg.data, cfg.text_column, cfg.label_column)
        self.digest = corpus.digest
        if kind == CLASSIFIER:
            self._classifier(cfg, corpus, tokenizer)
        else:
            self._causal_lm(cfg, corpus, tokenizer)

    def _classifier(self, cfg, corpus, tokenizer) -> None:
        from edgekd.data.batching import ClassificationStream

        if not corpus.is_classification:
            raise EdgekdError(f"the teacher is a classifier but data {cfg.data} has no labels: give JSONL or a data "
                              f"set with a 'label' field")
        remap_to_teacher(corpus, self.classes, cfg.data)
        self._make = lambda pos, seed: ClassificationStream(corpus.train, corpus.train_labels, tokenizer, self.seq_len,
                                                            self.batch_size, seed, self.rank, self.world, pos)
        n, b = min(len(corpus.validation), cfg.eval_blocks * 4), EVAL_BATCH_CLASSIFIER
        vs = ClassificationStream(corpus.validation, corpus.validation_labels, tokenizer, self.seq_len, b, 0)
        self.eval_batches = [{"input_ids": vs.ids[i:i + b], "attention_mask": vs.mask[i:i + b],
                              "labels": vs.labels[i:i + b]} for i in range(0, n, b)]
        self.example_ids, self.heldout_ids = vs.ids[:4], None

    def _images(self, cfg, reader) -> None:
        """Labelled images (data/images.py) at the teacher's input: `pixel_values` batches instead of tokens."""
        from edgekd.data.images import ImageStream, load_images, max_shift_for

        corpus = load_images(cfg.data, reader, cfg.text_column, cfg.label_column)
        self.digest = corpus.digest
        remap_to_teacher(corpus, self.classes, cfg.data)
        train, val = reader.normalise(corpus.train), reader.normalise(corpus.validation)
        background = reader.normalise(torch.zeros(1, reader.channels, 1, 1)).view(-1)  # a black border
        shift = max_shift_for(reader) if cfg.augment else 0
        self._make = lambda pos, seed: ImageStream(train, corpus.train_labels, self.batch_size, seed, self.rank,
                                                   self.world, pos, shift, background)
        n, b = min(len(val), cfg.eval_blocks * 8), EVAL_BATCH_CLASSIFIER
        labels = torch.tensor(corpus.validation_labels[:n], dtype=torch.long)
        self.eval_batches = [{"pixel_values": val[i:i + b], "labels": labels[i:i + b]} for i in range(0, n, b)]
        self.example_ids, self.heldout_ids = val[:4], None

    def _causal_lm(self, cfg, corpus, tokenizer) -> None:
        from edgekd.data.batching import BlockStream, eval_blocks
        from edgekd.data.cache import split_tokens

        train = split_tokens(corpus, "train", tokenizer)
        val = split_tokens(corpus, "validation", tokenizer)
        if any(t.numel() and int(t.max()) >= len(tokenizer) for t in (train, val)):  # none: too little data
            raise EdgekdError("the tokenizer produced ids outside its vocabulary: the teacher's tokenizer is corrupt")
        self._make = lambda pos, seed: BlockStream(train, self.seq_len, self.batch_size, seed, self.rank, self.world, pos)
        vb, b = eval_blocks(val, self.seq_len, cfg.eval_blocks), EVAL_BATCH_LM
        self.eval_batches = [{"input_ids": vb[i:i + b], "attention_mask": torch.ones_like(vb[i:i + b]),
                              "labels": vb[i:i + b]} for i in range(0, len(vb), b)]
        self.example_ids, self.heldout_ids = vb, vb

    def _seq2seq(self, cfg, tokenizer, decoder_start: int) -> None:
        from edgekd.data.parallel_corpus import PairStream, collate, encode_pairs, load_parallel

        corpus = load_parallel(cfg.data)
        self.digest = corpus.digest
        src, tgt = encode_pairs(corpus.train, tokenizer, self.seq_len)
        pad = tokenizer.pad_token_id
        if pad is None:
            raise EdgekdError("the teacher's tokenizer has no pad token, so sentences cannot be batched: set one and "
                              "save it with the teacher")
        self._make = lambda pos, seed: PairStream(src, tgt, self.batch_size, pad, decoder_start, seed, self.rank,
                                                  self.world, pos)
        val = corpus.validation[:cfg.eval_blocks * EVAL_BATCH_CLASSIFIER]
        vs, vt = encode_pairs(val, tokenizer, self.seq_len)
        b = EVAL_BATCH_CLASSIFIER
        self.eval_batches = [collate(vs[i:i + b], vt[i:i + b], pad, decoder_start) for i in range(0, len(vs), b)]
        pick = torch.linspace(0, len(val) - 1, min(HELDOUT_TRANSLATIONS, len(val))).round().long().unique().tolist()
        self.heldout_pairs = [val[i] for i in pick]
        self.example_ids, self.heldout_ids = self.eval_batches[0]["input_ids"], None

    def stream(self, position: int = 0, seed: Optional[int] = None):
        """The training stream from global batch `position` (seed: the run's unless given)."""
        return self._make(position, self.seed if seed is None else seed)
