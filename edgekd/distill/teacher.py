"""The teachers edgekd trains itself, with the same trainer and hard-label objective as every other model:
the built-in one (`edgekd teacher train`, from edgekd.models.builtin.RECIPE) and tiny ones built in
seconds from local text (tests, trying edgekd offline).

The recipe trains on CPU with one thread: bitwise equality holds for the same torch version, thread
count and CPU kind (float reductions depend on how work is split and vectorised); elsewhere the
result matches to float tolerance. Validation loss and the hashes of data and tokenizer are recorded
in recipe.json so a reproduction can be checked.
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from typing import Optional

import torch

from edgekd.errors import EdgekdError
from edgekd.io import atomic_dir, write_json
from edgekd.models.builtin import BUILTIN_DIR, RECIPE, make_readable


def _recipe(steps: Optional[int], seed: Optional[int], threads: Optional[int]) -> dict:
    r = dict(RECIPE)
    if steps is not None:
        if steps < 1:
            raise EdgekdError(f"--steps must be at least 1, got {steps}")
        r["steps"] = steps
    r["seed"] = r["seed"] if seed is None else seed
    r["threads"] = r["threads"] if threads is None else threads
    return r


def train_builtin_teacher(out: str | os.PathLike = BUILTIN_DIR, steps: Optional[int] = None,
                          seed: Optional[int] = None, threads: Optional[int] = None, quiet: bool = False,
                          checkpoints: Optional[str | os.PathLike] = None) -> Path:
    """Train the built-in teacher from its recipe and write it (atomically) to `out`.

    `checkpoints`: a folder for checkpoints every eval_every steps, resumed from when it holds some (the
    recipe's schedule is warmup-stable-decay, so a stable-phase checkpoint of a longer run continues into
    a shorter recipe exactly)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekd.data.batching import BlockStream, encode_texts, eval_blocks
    from edgekd.data.corpus import load_builtin
    from edgekd.data.tokenizer import tokenizer_hash, train_tokenizer
    from edgekd.distill.evaluate import heldout_loss
    from edgekd.distill.objective import hard_label_objective
    from edgekd.distill.trainer import TrainConfig, Trainer
    from edgekd.models.loading import CAUSAL_LM

    r = _recipe(steps, seed, threads)
    torch.set_num_threads(r["threads"])
    torch.manual_seed(r["seed"])
    corpus = load_builtin()
    tokenizer = train_tokenizer(corpus.train, vocab_size=r["config"]["vocab_size"])
    val = eval_blocks(encode_texts(corpus.validation, tokenizer), r["seq_len"], r["eval_blocks"])
    model = LlamaForCausalLM(LlamaConfig(**r["config"], bos_token_id=tokenizer.eos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    stream = BlockStream(encode_texts(corpus.train, tokenizer), r["seq_len"], r["batch_size"], seed=r["seed"])
    tc = TrainConfig(steps=r["steps"], batch_size=r["batch_size"], lr=r["lr"], min_lr_ratio=r["min_lr_ratio"],
                     warmup_steps=r["warmup_steps"], weight_decay=r["weight_decay"], grad_clip=r["grad_clip"],
                     checkpoint_every=r["eval_every"] if checkpoints else 0, seed=r["seed"], bf16=False,
                     eval_every=r["eval_every"], decay_steps=round(r["steps"] * r["decay_fraction"]))
    batches = [{"input_ids": val[i:i + 16], "attention_mask": torch.ones_like(val[i:i + 16]), "labels": val[i:i + 16]}
               for i in range(0, len(val), 16)]
    t0 = time.time()
    trainer = Trainer(model, hard_label_objective(causal=True), stream, tc, checkpoints, kind=CAUSAL_LM,
                      label="teacher", quiet=quiet, device=torch.device("cpu"),
                      evaluator=lambda m: heldout_loss(m, batches, CAUSAL_LM))
    if checkpoints:
        cks = [c for c in trainer.checkpoints() if int(c.name.split("_")[1]) <= r["steps"] - tc.decay_steps
               or int(c.name.split("_")[1]) <= r["steps"] and _same_schedule(c, tc)]
        if cks:
            trainer.load_checkpoint(cks[-1])
    losses = [h["loss"] for h in trainer.train()]
    val_loss = trainer.evals[-1]["eval_loss"] if trainer.evals else heldout_loss(model, batches, CAUSAL_LM)
    recipe = r | {
        "data": "builtin (Python standard library sources)", "data_hash": corpus.digest,
        "python": platform.python_version(), "tokenizer_hash": tokenizer_hash(tokenizer),
        "torch_version": torch.__version__, "train_tokens": r["steps"] * r["seq_len"] * r["batch_size"],
        "final_train_loss": sum(losses[-20:]) / len(losses[-20:]), "final_validation_loss": val_loss,
        "decay_steps": tc.decay_steps, "validation_curve": trainer.evals,
        "train_seconds": time.time() - t0,
        "reproducibility": "bitwise equal for the same torch version, thread count and machine"}
    return _ship(out, model, tokenizer, recipe, None if quiet else
                 f"built-in teacher written to {out}: validation loss {val_loss:.4f} "
                 f"(perplexity {math.exp(val_loss):.1f}) after {r['steps']} steps")


def _ship(out, model, tokenizer, recipe: dict, line: Optional[str]) -> Path:
    """A built-in teacher written atomically and readable by everyone, with its recipe.json; `line` said after."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json(Path(tmp) / "recipe.json", recipe)
        make_readable(Path(tmp))
    if line:
        from edgekd.console import echo

        echo(line)
    return Path(out)


def _same_schedule(ckpt: Path, tc) -> bool:
    """A checkpoint inside the decay phase continues only a run with the same schedule."""
    import json

    saved = json.loads((ckpt / "trainer.json").read_text()).get("config", {})
    return saved.get("steps") == tc.steps and saved.get("decay_steps") == tc.decay_steps


def make_tiny_teacher(out: str | os.PathLike, texts: Optional[list[str]] = None, *, vocab_size: int = 384,
                      hidden_size: int = 64, layers: int = 4, heads: int = 4, kv_heads: Optional[int] = None,
                      intermediate_size: int = 128, max_positions: int = 128, train_steps: int = 40,
                      seq_len: int = 32, seed: int = 0, classifier_labels: Optional[int] = None) -> Path:
    """A byte-level BPE trained on `texts` (default: a few stdlib files) and a small Llama trained briefly on
    them at a constant learning rate (a classifier head is left untrained)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from edgekd.data.batching import BlockStream, encode_texts
    from edgekd.data.corpus import builtin_files
    from edgekd.data.tokenizer import train_tokenizer
    from edgekd.distill.objective import hard_label_objective
    from edgekd.distill.trainer import TrainConfig, Trainer
    from edgekd.models.loading import CAUSAL_LM

    if texts is None:
        texts = [p.read_text(encoding="utf-8", errors="replace") for _, p in builtin_files()[:12]]
    tok = train_tokenizer(texts, vocab_size=vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                      intermediate_size=intermediate_size, max_position_embeddings=max_positions,
                      tie_word_embeddings=False, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    if classifier_labels:
        cfg.num_labels = classifier_labels
        model = LlamaForSequenceClassification(cfg)
    else:
        model = LlamaForCausalLM(cfg)
        if train_steps:
            stream = BlockStream(encode_texts(texts, tok), seq_len, 8, seed=seed)
            tc = TrainConfig(steps=train_steps, batch_size=8, lr=3e-3, min_lr_ratio=1.0, warmup_steps=0,
                             weight_decay=0.01, betas=(0.9, 0.999), grad_clip=0.0, checkpoint_every=0, bf16=False)
            Trainer(model, hard_label_objective(causal=True), stream, tc, None, kind=CAUSAL_LM, label="tiny teacher",
                    quiet=True, device=torch.device("cpu")).train()
    model.eval()
    out = Path(out)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def _seq2seq_trainer(model, tokenizer, train_pairs, val_pairs, *, max_len: int, batch_size: int, seed: int, tc,
                     checkpoints=None, quiet: bool = True, label: str = "teacher"):
    """The trainer and held-out batches for a Marian trained on pairs with hard labels (the edgekd Trainer)."""
    from edgekd.data.parallel_corpus import PairStream, collate, encode_pairs
    from edgekd.distill.evaluate import heldout_loss
    from edgekd.distill.objective import hard_label_objective
    from edgekd.distill.trainer import Trainer
    from edgekd.models.loading import SEQ2SEQ

    pad, start = tokenizer.pad_token_id, model.config.decoder_start_token_id
    src, tgt = encode_pairs(train_pairs, tokenizer, max_len)
    vs, vt = encode_pairs(val_pairs, tokenizer, max_len)
    batches = [collate(vs[i:i + 32], vt[i:i + 32], pad, start) for i in range(0, len(vs), 32)]
    trainer = Trainer(model, hard_label_objective(causal=False), PairStream(src, tgt, batch_size, pad, start, seed),
                      tc, checkpoints, kind=SEQ2SEQ, label=label, quiet=quiet, device=torch.device("cpu"),
                      evaluator=lambda m: heldout_loss(m, batches, SEQ2SEQ))
    return trainer, batches


def _marian(tokenizer, **config):
    from transformers import MarianConfig, MarianMTModel

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    cfg = MarianConfig(vocab_size=len(tokenizer), decoder_vocab_size=len(tokenizer), pad_token_id=pad, eos_token_id=eos,
                       decoder_start_token_id=pad, forced_eos_token_id=None, **config)
    model = MarianMTModel(cfg)
    from edgekd.models.seq2seq import greedy_generation_config

    model.generation_config = greedy_generation_config(model, config.get("max_position_embeddings", 64))
    return model


def train_builtin_seq2seq_teacher(out: str | os.PathLike | None = None, steps: Optional[int] = None,
                                  seed: Optional[int] = None, threads: Optional[int] = None, quiet: bool = False,
                                  checkpoints: Optional[str | os.PathLike] = None) -> Path:
    """Train the built-in English -> German Marian from SEQ2SEQ_RECIPE on the shipped gettext corpus and write it
    (atomically) to `out`, with recipe.json (validation curve, chrF of held-out translations)."""
    from edgekd.data.parallel_corpus import load_parallel, tokenizer_for_pairs
    from edgekd.data.tokenizer import tokenizer_hash
    from edgekd.distill.evaluate import translations
    from edgekd.distill.trainer import TrainConfig
    from edgekd.models.builtin import SEQ2SEQ_DIR, SEQ2SEQ_RECIPE

    r = dict(SEQ2SEQ_RECIPE) | {k: v for k, v in (("steps", steps), ("seed", seed), ("threads", threads)) if v is not None}
    if r["steps"] < 1:
        raise EdgekdError(f"--steps must be at least 1, got {r['steps']}")
    out = Path(out or SEQ2SEQ_DIR)
    torch.set_num_threads(r["threads"])
    torch.manual_seed(r["seed"])
    corpus = load_parallel("builtin")
    tokenizer = tokenizer_for_pairs(corpus.train, r["vocab_size"])
    model = _marian(tokenizer, **r["config"])
    tc = TrainConfig(steps=r["steps"], batch_size=r["batch_size"], lr=r["lr"], min_lr_ratio=r["min_lr_ratio"],
                     warmup_steps=r["warmup_steps"], weight_decay=r["weight_decay"], grad_clip=r["grad_clip"],
                     checkpoint_every=r["eval_every"] if checkpoints else 0, seed=r["seed"], bf16=False,
                     eval_every=r["eval_every"], decay_steps=round(r["steps"] * r["decay_fraction"]))
    trainer, batches = _seq2seq_trainer(model, tokenizer, corpus.train, corpus.validation[:r["eval_pairs"]],
                                        max_len=r["max_len"], batch_size=r["batch_size"], seed=r["seed"], tc=tc,
                                        checkpoints=checkpoints, quiet=quiet)
    if checkpoints and trainer.checkpoints():
        trainer.resume()
    t0 = time.time()
    losses = [h["loss"] for h in trainer.train()]
    model.eval()
    scores, _ = translations({"teacher": model}, corpus.validation[:r["eval_pairs"]], tokenizer, r["max_len"])
    recipe = r | {
        "data": "builtin (English -> German gettext catalogues, edgekd/data/gettext_en_de)", "data_hash": corpus.digest,
        "python": platform.python_version(), "tokenizer_hash": tokenizer_hash(tokenizer),
        "torch_version": torch.__version__, "final_train_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "final_validation_loss": trainer.evals[-1]["eval_loss"] if trainer.evals else None,
        "validation_chrf": scores["teacher"], "validation_curve": trainer.evals,
        "train_seconds": time.time() - t0}
    return _ship(out, model, tokenizer, recipe, None if quiet else
                 f"built-in seq2seq teacher written to {out}: validation loss {recipe['final_validation_loss']:.4f}, "
                 f"chrF {scores['teacher']:.1f} after {r['steps']} steps")


def make_tiny_seq2seq_teacher(out: str | os.PathLike, pairs: Optional[list] = None, *, vocab_size: int = 300,
                              d_model: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64, max_positions: int = 64,
                              train_steps: int = 60, seed: int = 0) -> Path:
    """A BPE trained on `pairs` (default: 600 pairs of the shipped corpus) and a tiny Marian trained on them
    briefly: what the tests and an offline try of the seq2seq path need, in seconds."""
    from edgekd.data.parallel_corpus import load_parallel, tokenizer_for_pairs
    from edgekd.distill.trainer import TrainConfig

    if pairs is None:
        pairs = load_parallel("builtin").train[:600]
    tok = tokenizer_for_pairs(pairs, vocab_size)
    torch.manual_seed(seed)
    model = _marian(tok, d_model=d_model, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
                    decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
                    max_position_embeddings=max_positions)
    if train_steps:
        tc = TrainConfig(steps=train_steps, batch_size=16, lr=3e-3, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.01,
                         betas=(0.9, 0.999), grad_clip=1.0, checkpoint_every=0, bf16=False)
        trainer, _ = _seq2seq_trainer(model, tok, pairs, pairs[:8], max_len=32, batch_size=16, seed=seed, tc=tc,
                                      label="tiny teacher")
        trainer.train()
    model.eval()
    out = Path(out)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def train_builtin_image_teacher(out: str | os.PathLike | None = None, steps: Optional[int] = None,
                                seed: Optional[int] = None, threads: Optional[int] = None, quiet: bool = False,
                                checkpoints: Optional[str | os.PathLike] = None) -> Path:
    """Train the built-in image teacher (edgekd's CNN, IMAGE_RECIPE) on the training split of scikit-learn's
    8x8 digits, with the same shifts a distillation run augments with, and write it (atomically) to `out` with
    its preprocessor_config.json and recipe.json (held-out accuracy and macro-F1)."""
    from edgekd.data.images import ImageStream, load_images, max_shift_for
    from edgekd.distill.evaluate import evaluate
    from edgekd.distill.objective import hard_label_objective
    from edgekd.distill.trainer import TrainConfig, Trainer
    from edgekd.models.builtin import IMAGE_DIR, IMAGE_RECIPE
    from edgekd.models.cnn import CNNConfig, CNNForImageClassification
    from edgekd.models.loading import CLASSIFIER
    from edgekd.models.vision import ImageInput

    r = dict(IMAGE_RECIPE) | {k: v for k, v in (("steps", steps), ("seed", seed), ("threads", threads)) if v is not None}
    if r["steps"] < 1:
        raise EdgekdError(f"--steps must be at least 1, got {r['steps']}")
    torch.set_num_threads(r["threads"])
    torch.manual_seed(r["seed"])
    c = r["config"]
    reader = ImageInput(c["image_size"], c["image_size"], c["num_channels"], tuple(r["processor"]["mean"]),
                        tuple(r["processor"]["std"]))
    corpus = load_images("builtin-digits", reader)
    classes = [str(v) for v in corpus.label_values]
    model = CNNForImageClassification(CNNConfig(**c, num_labels=len(classes), id2label=dict(enumerate(classes)),
                                                label2id={n: i for i, n in enumerate(classes)},
                                                architectures=[CNNForImageClassification.__name__]))
    background = reader.normalise(torch.zeros(1, reader.channels, 1, 1)).view(-1)
    stream = ImageStream(reader.normalise(corpus.train), corpus.train_labels, r["batch_size"], r["seed"],
                         augment=max_shift_for(reader), background=background)
    val, labels = reader.normalise(corpus.validation), torch.tensor(corpus.validation_labels)
    batches = [{"pixel_values": val[i:i + 64], "labels": labels[i:i + 64]} for i in range(0, len(val), 64)]
    tc = TrainConfig(steps=r["steps"], batch_size=r["batch_size"], lr=r["lr"], min_lr_ratio=r["min_lr_ratio"],
                     warmup_steps=r["warmup_steps"], weight_decay=r["weight_decay"], grad_clip=r["grad_clip"],
                     checkpoint_every=r["eval_every"] if checkpoints else 0, seed=r["seed"], bf16=False,
                     eval_every=r["eval_every"])
    t0 = time.time()
    trainer = Trainer(model, hard_label_objective(causal=False), stream, tc, checkpoints, kind=CLASSIFIER,
                      label="teacher", quiet=quiet, device=torch.device("cpu"),
                      evaluator=lambda m: evaluate({}, m, batches, CLASSIFIER)["teacher"]["eval_loss"])
    if checkpoints:
        trainer.resume()
    trainer.train()
    scores = evaluate({}, model, batches, CLASSIFIER)["teacher"]
    recipe = r | {"data": "builtin-digits (sklearn.datasets.load_digits: training split)", "data_hash": corpus.digest,
                  "train_examples": len(corpus.train_labels), "heldout_examples": len(corpus.validation_labels),
                  "python": platform.python_version(), "torch_version": torch.__version__,
                  "final_validation_loss": scores["eval_loss"], "heldout_accuracy": scores["accuracy"],
                  "heldout_macro_f1": scores["macro_f1"], "validation_curve": trainer.evals,
                  "train_seconds": time.time() - t0,
                  "reproducibility": "bitwise equal for the same torch version, thread count and machine"}
    out = IMAGE_DIR if out is None else out
    return _ship(out, model, reader, recipe, None if quiet else
                 f"built-in image teacher written to {out}: held-out accuracy {scores['accuracy']:.4f}, macro-F1 "
                 f"{scores['macro_f1']:.4f} after {r['steps']} steps")
