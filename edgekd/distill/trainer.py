"""The training loop: AdamW, warmup + cosine, clipping, accumulation, NaN guard, exact resume, DDP.

One loop serves the distilled student, the scratch baseline and the online/self schemes: the
objective is a callable, so the loop never knows which loss it optimises.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from edgekd import faults
from edgekd.errors import EdgekdError
from edgekd.io import atomic_dir, write_json


# Models this large train under bf16 autocast on CPUs with native bf16 (AVX-512 BF16, AMX: current Xeons,
# Zen 4) when the run does not say: activations at half the bytes, weights and AdamW state in float32.
# Smaller ones stay in float32, so the built-in runs give the same numbers on every machine.
BF16_CPU_MIN_PARAMS = 50_000_000


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (avx512_bf16 or amx_bf16 in /proc/cpuinfo's flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_bf16(requested: Optional[bool], device, params: int) -> bool:
    """Whether a model of `params` parameters trains under bf16 autocast on `device`: as `requested` (the run's
    bf16), else on with CUDA bf16, and on CPUs with native bf16 for models of BF16_CPU_MIN_PARAMS or more. The
    one rule: the trainer's autocast and the frozen teacher's weights (edgekd.distill.run) both follow it."""
    if requested is not None:
        return bool(requested)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16() and params >= BF16_CPU_MIN_PARAMS


def enable_checkpointing(model) -> None:
    """Gradient checkpointing on a transformers model (non-reentrant: it works with frozen inputs, autocast and
    DDP), or one line where its class does not support it."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise EdgekdError(f"{type(model).__name__} does not support gradient checkpointing (its activations need "
                          f"it at this length): lower --seq-len, or use a student class that supports it")
    kw = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24's name for it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 8               # sequences per optimiser step, over all processes
    micro_batch_size: Optional[int] = None   # per process and forward pass; None: the whole share
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    keep_checkpoints: int = 1          # the newest only (each is written whole before the older goes)
    bf16: Optional[bool] = None       # None: on with CUDA bf16, and on CPUs with native bf16 for large models
    gradient_checkpointing: bool = False  # each layer keeps its input only; activations rebuilt in backward
    seed: int = 0
    eval_every: int = 0               # held-out loss every N steps (and at 0 and the end); 0: never
    decay_steps: int = 0              # > 0: warmup-stable-decay (constant lr, then linear decay over the last N)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr at the last step; or, with decay_steps,
    warmup-stable-decay: the lr stays constant until the last decay_steps, so a run's stable phase does not
    depend on its length (a longer run continues from any stable checkpoint)."""
    warm = min(cfg.warmup_steps, max(0, cfg.steps - 1))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.decay_steps:
        into = step - (cfg.steps - cfg.decay_steps)
        return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * max(0.0, min(1.0, (into + 1) / cfg.decay_steps)))
    frac = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def counted_tokens(batch: dict, kind: str) -> int:
    """Rows the loss averages over: shifted LM labels that are not ignored, or one per sequence."""
    labels = batch["labels"]
    if kind == "classifier":
        return int(labels.shape[0])
    if kind == "seq2seq":  # the decoder's labels line up with its logits: nothing to shift
        return int((labels != -100).sum())
    lab = labels[:, 1:]
    mask = lab != -100
    if "attention_mask" in batch:
        mask = mask & batch["attention_mask"][:, 1:].bool()
    return int(mask.sum())


# An objective maps (the model being trained, a micro-batch) to (mean loss over its counted rows, dict of
# float parts): the trainer passes its (DDP-wrapped) model, so no objective holds a reference to one.
Objective = Callable[[torch.nn.Module, dict], tuple]


class Trainer:
    """Trains `model` (plus `extra_params`) on `stream` by `objective`, checkpointing into `ckpt_dir`.

    Accumulation: the optimiser step's loss is Σ over micro-batches (and processes) of each
    micro-batch's summed loss, divided by the step's total counted rows; so it equals one big batch.
    """

    def __init__(self, model: torch.nn.Module, objective: Objective, stream, cfg: TrainConfig,
                 ckpt_dir: Optional[str | os.PathLike] = None, *, kind: str = "causal-lm",
                 extra_params: Optional[list] = None, scheme=None, label: str = "train",
                 quiet: bool = False, on_step: Optional[Callable[[int, "Trainer"], None]] = None,
                 device: Optional[torch.device] = None, evaluator: Optional[Callable[[torch.nn.Module], float]] = None,
                 parallel: str = "ddp"):
        self.rank, self.world = dist_info()
        self.model, self.objective, self.stream, self.cfg = model, objective, stream, cfg
        self.kind, self.scheme, self.label, self.on_step = kind, scheme, label, on_step
        self.evaluator = evaluator if cfg.eval_every else None
        self.quiet = quiet or self.rank != 0
        self.device = device or next(model.parameters()).device
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.extra_params = [p for p in (extra_params or []) if p.requires_grad]
        self.ddp_model = model
        self.fsdp = parallel == "fsdp" and self.world > 1  # edgekd.distill.parallel: the model sharded in place
        self._plain_cls = type(model)
        if self.fsdp:
            from edgekd.distill import parallel as fsdp

            if self.extra_params:
                raise EdgekdError("--parallel fsdp trains the student's own parameters only; this loss or scheme adds "
                                  "trainable ones (a projection, a trained teacher): use --parallel ddp")
            fsdp.shard(model, self.device)
        elif self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp_model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = [p for p in model.parameters() if p.requires_grad] + self.extra_params
        self._all_params = params
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        fused_ok = self.device.type == "cuda" and not self.fsdp
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=tuple(cfg.betas), fused=fused_ok or None)
        self.step = 0
        self.history: list[dict] = []
        self.evals: list[dict] = []       # {"step": optimiser steps done, "eval_loss"}: the held-out curve
        self.skipped: list[int] = []
        if cfg.batch_size % self.world:
            raise EdgekdError(f"batch size {cfg.batch_size} is not divisible by {self.world} processes: pick a multiple")
        share = cfg.batch_size // self.world
        self.micro = cfg.micro_batch_size or share
        if share % self.micro:
            raise EdgekdError(f"micro-batch size {self.micro} does not divide the per-process batch {share}")
        self.bf16 = autocast_bf16(cfg.bf16, self.device, sum(p.numel() for p in self.model.parameters()))
        if cfg.gradient_checkpointing:
            enable_checkpointing(model)

    # --- checkpoints ---------------------------------------------------------------------------

    def _extra_tensors(self) -> dict:
        return {f"extra.{i}": p.detach().contiguous() for i, p in enumerate(self.extra_params)}

    def save_checkpoint(self) -> Optional[Path]:
        """Atomically write step_NNNNNN/ (complete or absent), then drop the oldest ones."""
        if self.ckpt_dir is None:
            return None
        if self.fsdp:  # every rank takes part in gathering the full state; rank 0 writes it
            from edgekd.distill.parallel import full_state

            model_state, optim_state = full_state(self.model, self.optimizer)
        if self.rank != 0:
            return None
        from safetensors.torch import save_file, save_model

        target = self.ckpt_dir / f"step_{self.step:06d}"
        with atomic_dir(target) as tmp:
            if self.fsdp:  # an ordinary model's tensors: load_model reads it into an unsharded one
                save_file(model_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            else:
                save_model(self.model, str(tmp / "model.safetensors"))
            if self.extra_params:
                save_file(self._extra_tensors(), str(tmp / "extra.safetensors"))
            torch.save(optim_state if self.fsdp else self.optimizer.state_dict(), tmp / "optimizer.pt")
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, tmp / "rng.pt")
            if self.scheme is not None and hasattr(self.scheme, "state_dict"):
                torch.save(self.scheme.state_dict(), tmp / "scheme.pt")
            py_state = random.getstate()
            write_json(tmp / "trainer.json", {
                "step": self.step, "data": self.stream.state_dict(), "history": self.history,
                "evals": self.evals, "skipped": self.skipped, "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
                "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.cfg).items()},
            })
        for old in self.checkpoints()[:-max(1, self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def checkpoints(self) -> list[Path]:
        if self.ckpt_dir is None or not self.ckpt_dir.is_dir():
            return []
        return sorted(p for p in self.ckpt_dir.glob("step_*") if p.is_dir() and not p.name.startswith("."))

    def load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file, load_model

        def pt(name: str, device="cpu"):
            return read_checkpoint_file(path / name, lambda f: torch.load(f, weights_only=True, map_location=device))

        if self.fsdp:  # every rank reads the full state and keeps its shard
            from edgekd.distill.parallel import load_full_state

            load_full_state(self.model, read_checkpoint_file(path / "model.safetensors", lambda f: load_file(str(f))),
                            self.optimizer, pt("optimizer.pt"))
        else:
            read_checkpoint_file(path / "model.safetensors", lambda f: load_model(self.model, str(f)))
        if self.extra_params:
            ex = read_checkpoint_file(path / "extra.safetensors", lambda f: load_file(str(f)))
            with torch.no_grad():
                for i, p in enumerate(self.extra_params):
                    p.copy_(ex[f"extra.{i}"])
        if not self.fsdp:
            optimizer_state = pt("optimizer.pt", self.device)
            read_checkpoint_file(path / "optimizer.pt", lambda f: self.optimizer.load_state_dict(optimizer_state))
        rng = pt("rng.pt")
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if (path / "scheme.pt").exists() and self.scheme is not None and hasattr(self.scheme, "load_state_dict"):
            self.scheme.load_state_dict(pt("scheme.pt"))
        meta = read_checkpoint_file(path / "trainer.json", lambda f: json.loads(f.read_text()))
        py = meta["python_rng"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        self.step = int(meta["step"])
        self.stream.load_state_dict(meta["data"])
        self.history = meta["history"]
        self.evals = meta.get("evals", [])
        self.skipped = meta.get("skipped", [])

    def resume(self) -> bool:
        """Load the newest complete checkpoint; False when there is none."""
        cks = self.checkpoints()
        if self.world > 1:  # every rank loads what rank 0 wrote
            dist.barrier()
        if not cks:
            return False
        self.load_checkpoint(cks[-1])
        return True

    # --- the loop ------------------------------------------------------------------------------

    def _micro_batches(self, batch: dict) -> list[dict]:
        n = batch["labels"].shape[0]
        return [{k: v[i:i + self.micro].to(self.device) for k, v in batch.items()} for i in range(0, n, self.micro)]

    def train_step(self) -> dict:
        """One optimiser step (or a skipped one); returns its log record."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.model.train()
        batch = self.stream.next()
        if self.scheme is not None and hasattr(self.scheme, "training_batch"):
            batch = self.scheme.training_batch(self.model, batch, self.step)
        micro = self._micro_batches(batch)
        counts = [counted_tokens(m, self.kind) for m in micro]
        local = torch.tensor([float(sum(counts))], dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(local)
        total = max(1.0, float(local.item()))
        loss_sum = torch.zeros((), dtype=torch.float64)
        parts_sum: dict[str, float] = {}
        for i, (m, n) in enumerate(zip(micro, counts)):
            sync = (i == len(micro) - 1) or self.world == 1
            ctx = self._no_sync() if (not sync and self.world > 1) else _null()
            with ctx:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    loss, parts = self.objective(self.ddp_model, m)
                # mean over this micro-batch -> its share of the step's global mean; DDP averages
                # gradients over processes, so multiply back by the world size.
                scaled = loss.float() * (n / total) * self.world
                scaled.backward()
            loss_sum += loss.detach().double() * n
            for k, v in (parts or {}).items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v) * n
        stats = torch.cat([loss_sum.reshape(1), torch.tensor([parts_sum.get(k, 0.0) for k in sorted(parts_sum)],
                                                              dtype=torch.float64)])
        if self.world > 1:
            dist.all_reduce(stats)
        step_loss = float(stats[0]) / total
        if self.extra_params and self.world > 1:
            for p in self.extra_params:  # not inside DDP: average their gradients by hand
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        if self.fsdp:
            from edgekd.distill.parallel import clip_grad_norm
        else:
            clip_grad_norm = torch.nn.utils.clip_grad_norm_
        gnorm = clip_grad_norm(self._all_params, cfg.grad_clip if cfg.grad_clip else float("inf"))
        rec = {"step": self.step, "loss": step_loss, "lr": lr, "tokens": int(total), "grad_norm": float(gnorm),
               "unit": "img" if "pixel_values" in batch else "tok"}  # what `tokens` counts: images or tokens
        rec.update({k: float(stats[1 + i]) / total for i, k in enumerate(sorted(parts_sum))})
        if not (math.isfinite(step_loss) and math.isfinite(float(gnorm))):
            self.optimizer.zero_grad(set_to_none=True)
            rec["skipped"] = True
            self.skipped.append(self.step)
            if not self.quiet:
                from edgekd.console import note

                note(f"[{self.label}] step {self.step}: non-finite loss or gradient ({step_loss}, norm {float(gnorm)}); step skipped")
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.scheme is not None and hasattr(self.scheme, "after_step"):
                self.scheme.after_step(self.model, self.step + 1)
        self.step += 1
        self.history.append(rec)
        return rec

    def train(self) -> list[dict]:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        cfg = self.cfg
        t0, tok0 = time.time(), 0
        with Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                      disable=self.quiet, transient=False) as bar:
            task = bar.add_task(self.label, total=cfg.steps, completed=self.step, info="")
            if self.step == 0:
                self._evaluate()
            while self.step < cfg.steps:
                rec = self.train_step()
                if self.step % max(1, cfg.eval_every) == 0 or self.step == cfg.steps:
                    self._evaluate()
                tok0 += rec["tokens"]
                tps = tok0 / max(1e-9, time.time() - t0)
                rec["tokens_per_s"] = tps
                bar.update(task, completed=self.step, info=f"loss {rec['loss']:.3f}  {tps:,.0f} {rec['unit']}/s")
                if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                    self.save_checkpoint()
                    if self.world > 1:
                        dist.barrier()
                    faults.point(self.label)
                if self.on_step is not None:
                    self.on_step(self.step, self)
        return self.history

    def _no_sync(self):
        if self.fsdp:
            from edgekd.distill.parallel import no_gradient_sync

            return no_gradient_sync(self.model)
        return self.ddp_model.no_sync()

    def release_optimizer(self) -> None:
        """Drop the optimiser's state (AdamW: two tensors per parameter) once training is over: the report
        needs the model, its history and curve, not the moments (the last checkpoint has them)."""
        self.optimizer.state.clear()
        for p in self.model.parameters():
            p.grad = None

    def unsharded_model(self) -> torch.nn.Module:
        """The trained model as an ordinary one on every rank (under FSDP a gathered copy; collective)."""
        if not self.fsdp:
            return self.model
        from edgekd.distill.parallel import gathered

        return gathered(self.model, self._plain_cls)

    def _evaluate(self) -> None:
        """One point of the held-out loss curve (rank 0 records it; no randomness is consumed)."""
        if self.evaluator is not None and not (self.evals and self.evals[-1]["step"] == self.step):
            self.evals.append({"step": self.step, "eval_loss": float(self.evaluator(self.model))})


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def read_checkpoint_file(f: Path, load):
    """`load(f)` for one file of a checkpoint, or one line naming the file and what to do: a truncated file, a
    pickle of arbitrary objects (never unpickled: edgekd reads tensors only) or a mismatched state."""
    import pickle

    try:
        return load(f)
    except Exception as e:  # noqa: BLE001  safetensors, pickle, torch and json each raise their own types
        if isinstance(e, pickle.UnpicklingError):
            why = "it holds Python objects, not only tensors, and edgekd does not unpickle those"
        elif isinstance(e, (EOFError, json.JSONDecodeError)) or "incomplete" in str(e) or "truncat" in str(e):
            why = "it is cut off or corrupt"
        elif isinstance(e, FileNotFoundError):
            why = "it is missing"
        else:
            why = f"{type(e).__name__}: it does not hold what edgekd saved there"
        raise EdgekdError(f"checkpoint file {f} is unreadable ({why}): delete the folder {f.parent} to resume from the "
                          f"checkpoint before it, or start a new run with another --out") from e
