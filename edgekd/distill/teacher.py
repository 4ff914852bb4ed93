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
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json(Path(tmp) / "recipe.json", recipe)
        make_readable(Path(tmp))
    if not quiet:
        from edgekd.console import echo

        echo(f"built-in teacher written to {out}: validation loss {val_loss:.4f} "
             f"(perplexity {math.exp(val_loss):.1f}) after {r['steps']} steps")
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
