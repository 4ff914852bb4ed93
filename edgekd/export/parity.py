"""Compares an exported model with PyTorch on the same token ids and decides pass or fail: logits of the
fixed-window files (onnx/tflite), greedy generation of the generative exports (litert-lm/onnx-genai)."""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from edgekd.errors import EdgekdError, JobFailed
from edgekd.export import graph_runtime


def _row(feeds: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i:i + 1] for k, v in feeds.items()}


def _count(feeds: dict[str, torch.Tensor]) -> int:
    return int(next(iter(feeds.values())).shape[0])


def reference_logits(module: torch.nn.Module, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """PyTorch's logits of each row of `feeds` ({input name: [N, S]}), one row at a time as the file runs."""
    with torch.no_grad():
        return [module(**_row(feeds, i)).float().numpy() for i in range(_count(feeds))]


def exported_logits(path: str, feeds: dict[str, torch.Tensor]) -> tuple[list[np.ndarray], str]:
    """The exported file's logits of each row of `feeds`, run in its own runtime (onnxruntime, LiteRT), and
    that runtime (name and version)."""
    model = graph_runtime.load(path)
    try:
        return graph_runtime.run_rows(model, {k: v.numpy() for k, v in feeds.items()}), model.runtime
    except graph_runtime.RunnerError as e:
        raise JobFailed(str(e)) from e


# The one comparison of a file's logits with PyTorch's (torch-free, so a board runs the same: graph_runtime).
compare = graph_runtime.compare_logits

# The most bytes of parity rows and PyTorch logits kept beside an export for checking it on a device.
DEVICE_CHECK_BYTES = 4 << 20


def write_device_check(out: Path, rows: dict[str, torch.Tensor], ref: list[np.ndarray], quantized: bool,
                       min_top1: Optional[float], labels: bool) -> dict:
    """FILE.parity.npz beside the export `out`: its parity rows, PyTorch's logits of them and the bar it passed
    (graph_runtime.parity_run reads it where the file runs: a board checks the same rows by the same bar).
    As many rows as fit DEVICE_CHECK_BYTES; the record's `device_check`."""
    from edgekd.io import atomic_path

    per_row = int(ref[0].nbytes) + sum(int(v[0].numel()) * v.element_size() for v in rows.values())
    if per_row > DEVICE_CHECK_BYTES:
        return {"written": False, "why": f"one parity row and its logits are {per_row / 1e6:.0f} MB, more than the "
                                         f"{DEVICE_CHECK_BYTES >> 20} MB a device check set holds"}
    n = min(len(ref), DEVICE_CHECK_BYTES // per_row)
    path = out.with_name(out.name + graph_runtime.CHECK_SUFFIX)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, reference=np.stack(ref[:n]), quantized=np.bool_(quantized), labels=np.bool_(labels),
                 min_top1=np.float64(np.nan if min_top1 is None else min_top1),
                 **{f"in.{k}": v[:n].numpy() for k, v in rows.items()})
    return {"written": True, "file": path.name, "rows": n}


# --- generation -----------------------------------------------------------------------------------
# Quantised generative exports, from measurements (8 held-out prompts x 48 tokens, 2026-12): int4 top-1
# agreement 0.94 (litert-lm) / 0.95 (onnx-genai) on the built-in teacher, 0.86 / 0.96 on a half-width
# student after 150 distillation steps (flatter distributions flip more argmaxes); int8 >= 0.99. The
# perplexity ratio stayed within 0.994-1.007 everywhere. The bounds leave that spread room and still
# fail a broken quantiser (wrong scales give ratios far above 1.1 and agreement far below 0.8).
# Top-1 agreement is counted where PyTorch's choice is decisive (its top probability at least
# GEN_DECISIVE_MARGIN above the runner-up): between near-tied tokens an argmax flip is rounding, not a
# broken quantiser (a barely trained tiny model, whose predictions are nearly flat, gave 0.34-0.64 over
# all positions at a perplexity ratio of 1.00). The ratio of perplexities judges the whole distribution.
GEN_MIN_TOP1 = 0.80
# A file built from a quantisation-aware student holds that student's weights exactly; what still differs is
# its kernels' accumulation order and, where the file quantises activations while it runs (litert-lm's int8
# rows, onnx-genai int8's int8 blocks, which the student imitates), their rounding. It must continue at least
# 7 of 8 prompts (32 tokens each) exactly as that PyTorch model does.
GEN_QAD_MIN_MATCH = 0.875
GEN_MAX_PPL_RATIO = 1.10
GEN_DECISIVE_MARGIN = graph_runtime.DECISIVE_MARGIN
GEN_PROMPTS = 8
GEN_NEW_TOKENS = 32  # tokens each export generates per prompt, compared with PyTorch's
GEN_PROMPT_TOKENS = 48


def builtin_prompts(model_dir, n: int = GEN_PROMPTS, length: int = GEN_PROMPT_TOKENS) -> list[list[int]]:
    """`n` windows of `length` token ids from the middle of the built-in corpus's held-out (validation)
    files, in the model's own tokenizer, no special tokens: deterministic, and never trained on."""
    from edgekd.data.corpus import load_builtin
    from edgekd.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    prompts = []
    for text in load_builtin().validation:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= 2 * length:
            mid = len(ids) // 2
            prompts.append([int(t) for t in ids[mid:mid + length]])
        if len(prompts) == n:
            break
    return prompts


_margin = graph_runtime.margin


def _nll(logits: np.ndarray, ids: list[int]) -> np.ndarray:
    """Negative log-likelihood of ids[1:] under the rows that predict them."""
    x = logits[:-1].astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    return -logp[np.arange(len(ids) - 1), ids[1:]]


# The held-out text each kept generative export's own quality is measured on, in its runtime: QUALITY_BLOCKS
# held-out blocks (a third of the job's 48, spread over them), each cut to what every export holds (the
# litert-lm bundle's KV cache, generative_export.CACHE_LENGTH). The runtimes score one token per decode
# step: 8 blocks x 191 tokens took 0.6-1.5 s an export for the built-in default's student on 2 busy cores
# (16 spread blocks: 9.3 s for its four exports, of a 20-minute job there). The held-out blocks differ a lot
# (code, tables): PyTorch float scored 4.02 on the first 8 and 2.65 on the first 16, 3.42 on 16 spread over
# the 48, against 3.49 on all of them.
QUALITY_BLOCKS = 16


@dataclass(frozen=True)
class HeldoutText:
    """Held-out token windows ([blocks, window]) and the teacher's argmax at each scored position
    ([blocks, window - 1]: row i predicts token i + 1; None without a teacher of the same vocabulary)."""

    ids: np.ndarray
    teacher_top1: Optional[np.ndarray]
    source: str

    @classmethod
    def of(cls, ids, teacher_top1, window: int, blocks: int = QUALITY_BLOCKS,
           source: str = "held-out blocks") -> "HeldoutText":
        """The first `window` tokens of `blocks` rows of `ids` spread evenly over them (consecutive blocks come
        from the same few files), the teacher's argmax cut alike (a causal model's prediction at a position
        reads nothing after it)."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.unique(np.linspace(0, len(ids) - 1, min(blocks, len(ids))).round().astype(np.int64))
        w = min(window, ids.shape[1])
        top1 = None if teacher_top1 is None else np.asarray(teacher_top1, dtype=np.int64)[rows, :w - 1]
        spread = "" if len(rows) == len(ids) else f", spread evenly over all {len(ids)}"
        return cls(ids[rows, :w], top1, f"the first {w} tokens of {len(rows)} {source}{spread}")

    def scores(self, nll: np.ndarray, top1: np.ndarray) -> dict:
        """eval_loss (mean next-token cross-entropy), perplexity and top-1 agreement with the teacher of
        per-position losses and argmaxes ([blocks, window - 1])."""
        loss = float(nll.mean())
        return {"eval_loss": loss, "perplexity": math.exp(min(loss, 80.0)),
                "top1_agreement_teacher": None if self.teacher_top1 is None
                else float((top1 == self.teacher_top1).mean())}

    def compare(self, file: tuple[np.ndarray, np.ndarray], pytorch: tuple[np.ndarray, np.ndarray]) -> dict:
        """An export record's quality keys from the file's and PyTorch float's (per-position loss, argmax) on
        this text (`_scored`)."""
        got, ref = self.scores(*file), self.scores(*pytorch)
        return got | {"top1_agreement_pytorch": float((file[1] == pytorch[1]).mean()), "pytorch_float": ref,
                      "eval_loss_vs_pytorch": got["eval_loss"] - ref["eval_loss"], "quality_on": self.on()}

    def measure(self, file_logits, pytorch_logits) -> dict:
        """compare() of the file's and PyTorch's logits of each window (iterables of [window, vocab] arrays)."""
        return self.compare(_scored(file_logits, self.ids), _scored(pytorch_logits, self.ids))

    def on(self) -> dict:
        """What the numbers were measured on (an export record's `quality_on`)."""
        return {"blocks": int(self.ids.shape[0]), "window": int(self.ids.shape[1]),
                "tokens": int(self.ids.shape[0] * (self.ids.shape[1] - 1)), "source": self.source}


def _scored(logits, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window of `ids`, the loss of each next token and the argmax that predicts it ([blocks, window - 1]);
    `logits`: each window's teacher-forced logits ([window, vocab]), best a generator, so that one window's are
    in memory at a time (an LLM's vocabulary makes them large)."""
    nll, top1 = [], []
    for x, row in zip(logits, ids):
        x = x.reshape(-1, x.shape[-1])
        nll.append(_nll(x, list(row)))
        top1.append(x[:-1].argmax(-1))
    return np.stack(nll), np.stack(top1)


# The labelled held-out sentences a classifier's files' own accuracy and macro-F1 are measured on, in their
# runtime: the first of the validation split's sentences, those the engine scores every model on
# (distill/data.py: its first eval_blocks x 4), at most QUALITY_SENTENCES. The files run one sentence per call.
QUALITY_SENTENCES = 256
# An image classifier's int8 file is held to its accuracy on the labelled held-out images: at most this far
# below PyTorch float's on the same images (labels that flip among near-ties of a weak student are not a failure;
# a file that loses accuracy is).
IMAGE_INT8_ACCURACY_DROP = 0.02


@dataclass(frozen=True)
class HeldoutSentences:
    """Labelled held-out sentences as a classifier reads them ({"input_ids", "attention_mask"} [n, seq_len]; an
    image classifier's held-out images, {"pixel_values"} [n, C, H, W]: `of_images`) and
    their labels in the teacher's classes ([n]), on which each classifier file's accuracy and macro-F1 are
    measured in its runtime, beside PyTorch float's (`measure`)."""

    feeds: dict
    labels: np.ndarray
    source: str
    unit: str = "sentences"  # what an example is, in the report's words: "images" for an image classifier
    _pytorch: dict = field(default_factory=dict, compare=False, repr=False)  # model dir -> PyTorch's logits

    @classmethod
    def of(cls, corpus, config, tokenizer, seq_len: int, n: Optional[int] = None,
           where: str = "the data") -> "HeldoutSentences":
        """The first min(n, QUALITY_SENTENCES) validation sentences of a labelled `corpus` (data.corpus.Corpus,
        its labels mapped here onto the classes of `config`, the classifier's config, as the engine maps them:
        distill.data.remap_to_teacher), encoded with `tokenizer` to `seq_len` (data.batching.encode_sentences)."""
        from types import SimpleNamespace

        from edgekd.data.batching import encode_sentences
        from edgekd.data.labels import teacher_classes
        from edgekd.distill.data import remap_to_teacher

        if not corpus.validation or corpus.validation_labels is None:
            raise EdgekdError(f"{where} has no labelled held-out sentences to score the exported classifier on: "
                              f"give labelled data with a validation split")
        remap_to_teacher(corpus, teacher_classes(SimpleNamespace(**config) if isinstance(config, dict) else config),
                         where)
        k = min(len(corpus.validation), QUALITY_SENTENCES, n or QUALITY_SENTENCES)
        ids, mask = encode_sentences(corpus.validation[:k], tokenizer, seq_len)
        return cls({"input_ids": ids, "attention_mask": mask}, np.asarray(corpus.validation_labels[:k], dtype=np.int64),
                   f"the first {k} of the {len(corpus.validation)} held-out sentences (the validation split), padded "
                   f"to {seq_len} and masked")

    @classmethod
    def of_images(cls, corpus, config, image, n: Optional[int] = None, where: str = "the data") -> "HeldoutSentences":
        """The same for an image classifier: the first min(n, QUALITY_SENTENCES) held-out images of `corpus`
        (data.images.ImageCorpus, its labels mapped onto the classes of `config`) as the model reads them
        (`image`: models.vision.ImageInput), {"pixel_values": [k, C, H, W]}."""
        from types import SimpleNamespace

        from edgekd.data.labels import teacher_classes
        from edgekd.distill.data import remap_to_teacher

        remap_to_teacher(corpus, teacher_classes(SimpleNamespace(**config) if isinstance(config, dict) else config),
                         where)
        k = min(len(corpus.validation_labels), QUALITY_SENTENCES, n or QUALITY_SENTENCES)
        return cls({"pixel_values": image.normalise(corpus.validation[:k])},
                   np.asarray(corpus.validation_labels[:k], dtype=np.int64),
                   f"the first {k} of the {len(corpus.validation_labels)} held-out images of {where}", "images")

    def scores(self, logits: np.ndarray) -> dict:
        """eval_loss (the labels' mean cross-entropy), accuracy and macro-F1 (distill.evaluate.macro_f1) of
        logits [n, classes]."""
        from edgekd.distill.evaluate import macro_f1

        x = logits.reshape(len(self.labels), -1).astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        nll = np.log(np.exp(x).sum(-1)) - x[np.arange(len(self.labels)), self.labels]
        pred = x.argmax(-1)
        return {"eval_loss": float(nll.mean()), "accuracy": float((pred == self.labels).mean()),
                "macro_f1": macro_f1(torch.from_numpy(pred), torch.from_numpy(self.labels))}

    def pytorch(self, module: torch.nn.Module, key) -> list[np.ndarray]:
        """PyTorch's logits of each sentence, one at a time as the files run (reference_logits), computed once
        per model (`key`: its directory) and shared by its exports."""
        if str(key) not in self._pytorch:
            self._pytorch[str(key)] = reference_logits(module, self.feeds)
        return self._pytorch[str(key)]

    def measure(self, file_logits: list[np.ndarray], pytorch_logits: list[np.ndarray]) -> dict:
        """An export record's quality keys: the file's eval_loss, accuracy and macro_f1, the share of sentences
        whose label it gives as PyTorch does (`top1_agreement_pytorch`), PyTorch float's numbers on the same
        sentences (`pytorch_float`), `eval_loss_vs_pytorch` and `quality_on`."""
        got, ref = np.concatenate(file_logits), np.concatenate(pytorch_logits)
        g, r = self.scores(got), self.scores(ref)
        return g | {"top1_agreement_pytorch": float((got.argmax(-1) == ref.argmax(-1)).mean()), "pytorch_float": r,
                    "eval_loss_vs_pytorch": g["eval_loss"] - r["eval_loss"],
                    "quality_on": {"sentences": int(len(self.labels)), "source": self.source, "unit": self.unit}}


def _does_not_run(e: Exception) -> JobFailed:
    return JobFailed(f"the exported model does not run in its runtime: {str(e).splitlines()[0][:300]}")


class GenerationReference:
    """PyTorch float's greedy continuations and teacher-forced logits on held-out prompts, computed once,
    against which each exported model is checked in its runtime (export/generative_runtime.py)."""

    def __init__(self, model, prompts: list[list[int]], source: str, new_tokens: int,
                 heldout: Optional[HeldoutText] = None):
        self.prompts, self.source, self.new_tokens, self.heldout = prompts, source, new_tokens, heldout
        self.model_dir = self.recipe = None  # set by load(): what device parity rebuilds this reference from
        self.max_len = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.tokens, self.logits = [], []
        with torch.no_grad():
            for p in prompts:
                ids = torch.tensor([p])
                seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
                self.tokens.append(seq[0, len(p):].tolist())
                if len(self.tokens[-1]) != new_tokens:
                    raise RuntimeError(f"PyTorch generated {len(self.tokens[-1])} tokens, not {new_tokens}")
                self.logits.append(model(ids).logits[0].float().numpy())
            if heldout is not None:  # PyTorch float on exactly the tokens the files are scored on
                self.heldout_scored = _scored((model(torch.from_numpy(row)[None]).logits[0].float().numpy()
                                               for row in heldout.ids), heldout.ids)

    @classmethod
    def load(cls, model_dir, prompts, new_tokens: int, heldout: Optional[HeldoutText] = None,
             recipe=None) -> "GenerationReference":
        """`recipe`: MODEL_DIR is a quantisation-aware student on that edgekd.quant recipe's grid; it runs with the
        runtime's quantisers in place (its weights unchanged by them, its matmul inputs quantised as the runtime
        does at run time): PyTorch fake-quant, the numerics of the file built from it."""
        from edgekd.models.loading import load_model

        model, _, _ = load_model(model_dir, with_tokenizer=False, what="model")
        model.eval()
        if recipe is not None:
            from edgekd.quant import quant_aware

            quant_aware(model, recipe, weights=False)  # already on its grid
        vocab = int(model.config.vocab_size)
        source = "prompts"
        if prompts is None:
            prompts, source = builtin_prompts(model_dir), f"built-in corpus validation files, {GEN_PROMPT_TOKENS} tokens each"
        prompts = [[int(t) for t in p] for p in prompts]
        if not prompts or any(len(p) < 2 for p in prompts) or any(t < 0 or t >= vocab for p in prompts for t in p):
            raise EdgekdError(f"prompts must be lists of at least 2 token ids in [0, {vocab}): tokenise with the "
                              f"model's own tokenizer")
        if heldout is not None and (heldout.ids.size == 0 or heldout.ids.shape[1] < 2 or int(heldout.ids.max()) >= vocab):
            raise EdgekdError(f"held-out text must be windows of at least 2 token ids in [0, {vocab}): tokenise it "
                              f"with the model's own tokenizer")
        ref = cls(model, prompts, source, new_tokens, heldout)
        ref.model_dir, ref.recipe = str(model_dir), recipe
        return ref

    def quality(self, model) -> dict:
        """The export's own quality in its runtime (`model`, from generative_runtime.load) on the held-out text,
        beside PyTorch float's on the same tokens (an export record's `eval_loss`, `perplexity`,
        `top1_agreement_teacher`, `top1_agreement_pytorch`, `pytorch_float`, `quality_on`); {} without held-out
        text."""
        h = self.heldout
        if h is None:
            return {}
        started = time.perf_counter()
        rec = h.compare(_scored((model.next_token_logits([int(t) for t in row]) for row in h.ids), h.ids),
                        self.heldout_scored)
        rec["quality_on"] |= {"runtime": model.version, "seconds": time.perf_counter() - started}
        return rec

    def figures(self, got: list[list[int]], logits: list[np.ndarray]) -> dict:
        """How a file's greedy tokens and teacher-forced logits on these prompts compare with this reference's."""
        from edgekd.export.generative_runtime import scored_rows

        scored = [scored_rows(g, p) for g, p in zip(logits, self.prompts)]
        rec = self.figures_of(got, [a for a, _ in scored], [n for _, n in scored])
        rec["max_abs_logit_diff"] = float(max(np.abs(r - g).max() for r, g in zip(self.logits, logits)))
        return rec

    def figures_of(self, got: list[list[int]], argmax: list[list[int]], nll: list[list[float]]) -> dict:
        """figures() from what a file gives back on a device (generative_runtime.parity_run): its greedy tokens,
        and per prompt the argmax of each teacher-forced row and the loss of each next token."""
        first = [next((i for i, (a, b) in enumerate(zip(r, g)) if a != b), None if len(g) >= len(r) else len(g))
                 for r, g in zip(self.tokens, got)]
        ref_nll = np.concatenate([_nll(r, p) for r, p in zip(self.logits, self.prompts)])
        got_nll = np.concatenate([np.asarray(n, dtype=np.float64) for n in nll])
        rows = np.concatenate([r.argmax(-1) == np.asarray(a) for r, a in zip(self.logits, argmax)])
        decisive = np.concatenate([_margin(r) >= GEN_DECISIVE_MARGIN for r in self.logits])
        rec = {"tokens_match_share": float(np.mean([f is None for f in first])),
               "prompts_matched": int(sum(f is None for f in first)), "prompts": len(self.prompts),
               "first_divergence": first,
               "mean_first_divergence": float(np.mean([self.new_tokens if f is None else f for f in first])),
               "ppl_reference": float(np.exp(ref_nll.mean())), "ppl_export": float(np.exp(got_nll.mean())),
               "top1_agreement": float(rows.mean()),
               "top1_agreement_decisive": float(rows[decisive].mean()) if decisive.any() else None,
               "decisive_positions": int(decisive.sum()), "positions": int(rows.size)}
        rec["ppl_ratio"] = rec["ppl_export"] / rec["ppl_reference"]
        return rec

    def judge(self, rec: dict, quantized: bool, min_top1: float | None, vs_float: dict | None = None) -> dict:
        """Pass or fail a file's figures (figures/figures_of) by the one bar, here or on a device: float, every
        prompt's greedy tokens; quantised, the top-1 and perplexity-ratio bounds, and against a quantisation-aware
        student (`vs_float`: the figures against its float student) GEN_QAD_MIN_MATCH of the prompts too."""
        if quantized:
            bound = GEN_MIN_TOP1 if min_top1 is None else min_top1
            rec["threshold"] = {"top1_agreement_decisive": bound, "ppl_ratio": GEN_MAX_PPL_RATIO,
                                "decisive_margin": GEN_DECISIVE_MARGIN}
            agree = rec["top1_agreement_decisive"]
            rec["passed"] = bool((agree is None or agree >= bound) and rec["ppl_ratio"] <= GEN_MAX_PPL_RATIO)
            if vs_float is not None:
                rec["threshold"]["tokens_match_share"] = GEN_QAD_MIN_MATCH
                rec["passed"] = rec["passed"] and rec["tokens_match_share"] >= GEN_QAD_MIN_MATCH
                rec["vs_float"] = {k: vs_float[k] for k in ("tokens_match_share", "prompts_matched",
                                                            "mean_first_divergence", "ppl_ratio",
                                                            "top1_agreement_decisive")}
        else:
            rec["threshold"] = {"tokens_match_share": 1.0}
            rec["passed"] = rec["tokens_match_share"] == 1.0
        return rec

    def check(self, path: str, quantized: bool, min_top1: float | None,
              float_reference: "GenerationReference | None" = None) -> dict:
        """Greedy tokens, perplexity ratio and top-1 agreement of the export at PATH, and pass or fail.

        `float_reference`: this reference is a quantisation-aware student whose weights are on the file's grid
        (edgekd.distill.quant_aware), and that is the float student's. The file is then held to this model's
        greedy tokens (GEN_QAD_MIN_MATCH of the prompts, and the quantised bounds); how it compares with the
        float student stays in the record (`vs_float`) as quality figures, and its held-out quality is given
        beside both PyTorch models."""
        from edgekd.export import generative_runtime

        try:
            model = generative_runtime.load(path)
            got = [model.generate(p, self.new_tokens) for p in self.prompts]
            logits = [model.next_token_logits(p) for p in self.prompts]
        except Exception as e:
            raise _does_not_run(e) from e
        rec = self.figures(got, logits)
        rec["run"] = {"runtime": model.runtime, "runner": model.runner, "version": model.version,
                      "prompts": len(self.prompts), "prompt_source": self.source, "prompt_ids": self.prompts,
                      "machine": platform.machine(),
                      "prompt_tokens": [len(p) for p in self.prompts], "new_tokens": self.new_tokens,
                      "sampler": "greedy (argmax of the runtime's logits), no start token or template added",
                      "reference": ("the quantisation-aware student (weights on the file's grid)" if float_reference
                                    else "the float student") + ": transformers generate(do_sample=False) in float32; "
                                   "teacher-forced logits over each prompt for perplexity and top-1 agreement",
                      "context_length": getattr(model, "context_length", getattr(model, "cache_length", None))}
        rec["generated"] = got  # the file's greedy tokens here: what a device's run of it is compared with too
        self.judge(rec, quantized, min_top1, None if float_reference is None else float_reference.figures(got, logits))
        try:  # a file that is kept: its own quality on the held-out text
            if rec["passed"]:
                rec |= (float_reference or self).quality(model)
                if float_reference is not None and self.heldout is not None and "eval_loss" in rec:
                    own = self.heldout.scores(*self.heldout_scored)
                    rec["pytorch_quant_aware"] = own
                    rec["eval_loss_vs_quant_aware"] = rec["eval_loss"] - own["eval_loss"]
        except Exception as e:
            raise _does_not_run(e) from e
        finally:
            model.close()
        return rec


def generation_failure_line(name: str, rec: dict) -> str:
    if rec["quantize"] == "none":
        return (f"{name} failed generation parity: {rec['tokens_match_share']:.0%} of {rec['run']['prompts']} prompts "
                f"continue exactly as PyTorch's greedy {rec['run']['new_tokens']} tokens (mean first divergence at "
                f"token {rec['mean_first_divergence']:.1f}): the builder changed the numerics; report the model")
    agree = rec["top1_agreement_decisive"]
    if "tokens_match_share" in rec["threshold"] and rec["tokens_match_share"] < rec["threshold"]["tokens_match_share"]:
        return (f"{name} failed generation parity: {rec['prompts_matched']} of {rec['run']['prompts']} prompts continue "
                f"exactly as the quantisation-aware PyTorch student's greedy {rec['run']['new_tokens']} tokens (least "
                f"{rec['threshold']['tokens_match_share']:.0%}; mean first divergence at token "
                f"{rec['mean_first_divergence']:.1f}), whose weights the file holds: the runtime quantised them "
                f"differently from edgekd.quant's recipe; report the model, or pass --no-quant-aware")
    return (f"{name} failed generation parity: top-1 agreement {'-' if agree is None else format(agree, '.4f')} on "
            f"the {rec['decisive_positions']} of {rec['positions']} positions where PyTorch is decisive (least "
            f"{rec['threshold']['top1_agreement_decisive']}), perplexity ratio {rec['ppl_ratio']:.4f} (most "
            f"{rec['threshold']['ppl_ratio']}): try int8, or a lower --min-top1")


# --- the same check where the file runs ------------------------------------------------------------------------
_REFERENCES: dict = {}  # (model dir and its files, quant-aware, prompts, new tokens) -> GenerationReference


def reference_of_record(record: dict) -> tuple["GenerationReference", "GenerationReference | None"]:
    """The PyTorch reference an export's record (export_generative's, `parity_reference`) was checked against, and
    its float student's for a file built from a quantisation-aware student: rebuilt from the model directories,
    prompts and new-token count it names (computed once per process). One line if the record cannot say."""
    ref = record.get("parity_reference")
    prompts = (record.get("run") or {}).get("prompt_ids")
    if not ref or not prompts:
        raise EdgekdError(f"{record.get('path', 'the export')}'s parity record names no PyTorch reference (exported "
                          f"by an older edgekd): export it again to check it on the device")

    def load(model_dir: str, recipe):
        from pathlib import Path

        if not (Path(model_dir) / "config.json").is_file():
            raise EdgekdError(f"{model_dir}, the model {record.get('path', 'the export')} was checked against, is "
                              f"gone: device parity rebuilds PyTorch's tokens from it; export the file again")
        d = Path(model_dir).resolve()  # its files' sizes and times too: the shrink loop trains anew where it was
        files = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in d.iterdir() if f.is_file()))
        key = (str(d), files, recipe is not None, tuple(map(tuple, prompts)), ref["new_tokens"])
        if key not in _REFERENCES:
            _REFERENCES[key] = GenerationReference.load(model_dir, prompts, ref["new_tokens"], recipe=recipe)
        return _REFERENCES[key]

    if not ref.get("quant_aware"):
        return load(ref["model_dir"], None), None
    from edgekd.models.loading import read_config_dict
    from edgekd.quant import recipe_for_export

    from pathlib import Path

    recipe = recipe_for_export(record["format"], record["quantize"], read_config_dict(Path(ref["model_dir"])))
    return load(ref["model_dir"], recipe), load(ref["float_model_dir"], None)


def check_device_run(record: dict, run: dict, device: dict) -> dict:
    """Generation parity on a device: what the file gave there (`run`, generative_runtime.parity_run's, made by
    board_genbench.py on the device) against the same PyTorch reference and by the same bar as the export's check
    here (GenerationReference.judge), and against the file's own tokens here (`matched_here`: prompts whose greedy
    tokens the device repeats exactly). `device`: its facts (machine, emulated, ...)."""
    reference, float_reference = reference_of_record(record)
    min_top1 = (record.get("parity_reference") or {}).get("min_top1")
    rec = reference.figures_of(run["tokens"], run["argmax"], run["nll"])
    vs_float = None if float_reference is None else float_reference.figures_of(run["tokens"], run["argmax"], run["nll"])
    reference.judge(rec, record["quantize"] != "none", min_top1, vs_float)
    here = record.get("generated")
    rec["here"] = None if here is None else {
        "machine": (record.get("run") or {}).get("machine"), "prompts_matched": record.get("prompts_matched"),
        "same_tokens_as_device": int(sum(a == b for a, b in zip(here, run["tokens"])))}
    rec["run"] = {k: run.get(k) for k in ("runtime", "version", "runner", "context_length", "seconds", "threads")} | {
        "prompts": len(reference.prompts), "new_tokens": reference.new_tokens,
        "reference": ("the quantisation-aware student" if float_reference is not None else "the float student") +
                     f" ({reference.model_dir}), recomputed here: transformers generate(do_sample=False) in float32"}
    rec |= {"device": device.get("device"), "machine": device.get("machine"), "emulated": bool(device.get("emulated")),
            "emulated_by": device.get("emulated_by"), "cpu_features": device.get("cpu_features"),
            "tokens": run["tokens"]}
    if not rec["passed"]:
        rec["error"] = device_failure_line(os.path.basename(str(record.get("path", "the export"))), rec)
    return rec


def device_failure_line(name: str, rec: dict) -> str:
    """The one line of a file that fails generation parity on a device (`rec`: check_device_run's)."""
    t = rec.get("threshold") or {}
    where = f"{rec.get('device')} ({rec.get('machine')}{', emulated' if rec.get('emulated') else ''})"
    bar = ("every prompt's greedy tokens" if "top1_agreement_decisive" not in t else
           f"top-1 agreement {t['top1_agreement_decisive']} where decisive, perplexity ratio {t['ppl_ratio']}"
           + (f", {t['tokens_match_share']:.0%} of prompts" if "tokens_match_share" in t else ""))
    agree, here = rec.get("top1_agreement_decisive"), rec.get("here") or {}
    here_words = f"; here on {here['machine']} it matched {here.get('prompts_matched')}" if here.get("machine") else ""
    return (f"{name} failed generation parity on {where}: {rec['prompts_matched']} of {rec['prompts']} prompts "
            f"continue as PyTorch's greedy tokens (first divergences {rec['first_divergence']}), top-1 agreement "
            f"{'-' if agree is None else format(agree, '.3f')}, perplexity ratio {rec['ppl_ratio']:.4f} (the bar: "
            f"{bar}{here_words}): the runtime's {rec.get('machine')} kernels change the numerics; ship float, or "
            f"another runtime or precision there")
