"""The built-in teacher: a small Llama trained by edgekd on the stdlib corpus from a fixed recipe.

The package ships the result in edgekd/models/builtin_teacher/; `edgekd teacher train` reproduces it.
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

BUILTIN_DIR = Path(__file__).parent / "builtin_teacher"

RECIPE = {
    "config": {
        "vocab_size": 4096, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 688, "max_position_embeddings": 256,
        "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    },
    "seed": 1234,
    "steps": 500,
    "seq_len": 256,
    "batch_size": 8,
    "lr": 2e-3,
    "min_lr_ratio": 0.1,
    "warmup_steps": 50,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "threads": 1,
    "dtype": "float32",
    "eval_blocks": 64,
}


def _make_readable(d: Path) -> None:
    """Temporary files are created private; a shipped model must be readable by everyone."""
    d.chmod(0o755)
    for f in d.iterdir():
        f.chmod(0o644)


def builtin_teacher_dir() -> Path:
    """The shipped teacher; EdgekdError when the package lacks it (e.g. a source checkout without it)."""
    if not (BUILTIN_DIR / "model.safetensors").is_file():
        raise EdgekdError(f"the built-in teacher is missing from {BUILTIN_DIR}: run `edgekd teacher train --out {BUILTIN_DIR}`")
    return BUILTIN_DIR


def lr_at(step: int, total: int, lr: float, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@torch.no_grad()
def eval_lm_loss(model, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy over all predicted tokens of the blocks."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i:i + batch_size]
        logits = model(input_ids=x).logits[:, :-1].float()
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                   reduction="sum").item()
        count += x[:, 1:].numel()
    return total / count


def train_builtin_teacher(out: str | os.PathLike = BUILTIN_DIR, steps: Optional[int] = None,
                          seed: Optional[int] = None, threads: Optional[int] = None, quiet: bool = False) -> Path:
    """Train the built-in teacher from its recipe and write it (atomically) to `out`."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekd.data.batching import BlockStream, encode_texts, eval_blocks
    from edgekd.data.corpus import load_builtin
    from edgekd.data.tokenizer import tokenizer_hash, train_tokenizer

    r = dict(RECIPE)
    if steps is not None:
        if steps < 1:
            raise EdgekdError(f"--steps must be at least 1, got {steps}")
        r["steps"] = steps
    if seed is not None:
        r["seed"] = seed
    if threads is not None:
        r["threads"] = threads
    torch.set_num_threads(r["threads"])
    torch.manual_seed(r["seed"])

    corpus = load_builtin()
    tokenizer = train_tokenizer(corpus.train, vocab_size=r["config"]["vocab_size"])
    train_tokens = encode_texts(corpus.train, tokenizer)
    val = eval_blocks(encode_texts(corpus.validation, tokenizer), r["seq_len"], r["eval_blocks"])

    cfg = LlamaConfig(**r["config"], bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=r["lr"], betas=(0.9, 0.95))
    stream = BlockStream(train_tokens, r["seq_len"], r["batch_size"], seed=r["seed"])
    t0 = time.time()
    losses = []
    with Progress(TextColumn("teacher"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=quiet) as bar:
        task = bar.add_task("train", total=r["steps"], info="")
        for step in range(r["steps"]):
            model.train()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, r["steps"], r["lr"], r["warmup_steps"], r["min_lr_ratio"])
            batch = stream.next()
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tps = (step + 1) * r["seq_len"] * r["batch_size"] / (time.time() - t0)
            bar.update(task, advance=1, info=f"loss {loss.item():.3f}  {tps:,.0f} tok/s")
    val_loss = eval_lm_loss(model, val)

    recipe = dict(r)
    recipe.update({
        "data": "builtin (Python standard library sources)",
        "data_hash": corpus.digest,
        "python": platform.python_version(),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "torch_version": torch.__version__,
        "train_tokens": r["steps"] * r["seq_len"] * r["batch_size"],
        "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
        "final_validation_loss": val_loss,
        "train_seconds": time.time() - t0,
        "reproducibility": "bitwise equal for the same torch version, thread count and machine",
    })
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json(Path(tmp) / "recipe.json", recipe)
        _make_readable(Path(tmp))
    if not quiet:
        from edgekd.console import echo

        echo(f"built-in teacher written to {out}: validation loss {val_loss:.4f} "
              f"(perplexity {math.exp(val_loss):.1f}) after {r['steps']} steps")
    return Path(out)
