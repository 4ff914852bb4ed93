"""FSDP2 under torchrun (--parallel fsdp): a student or teacher too large for one device, sharded over
the processes with torch.distributed.fsdp.fully_shard, and what the trainer needs around it (gradient
sync off while accumulating, clipping over sharded gradients, full-state checkpoints)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from edgekd.errors import EdgekdError

PARALLEL = ("ddp", "fsdp")
NO_FSDP_SCHEMES = {"online": "it trains the teacher beside the student",
                   "self": "its teacher is an average of the student's weights",
                   "on_policy": "it samples from the student with generate"}


def check_parallel(parallel: str, scheme: str, world: int) -> None:
    """The errors a user can cause with --parallel, before anything is loaded."""
    if parallel not in PARALLEL:
        raise EdgekdError(f"unknown --parallel {parallel!r}: use {' or '.join(PARALLEL)}")
    if parallel != "fsdp":
        return
    if world < 2:
        raise EdgekdError("--parallel fsdp shards over torchrun's processes: run under "
                          "torchrun --nproc-per-node N (N > 1), or drop --parallel fsdp")
    if scheme in NO_FSDP_SCHEMES:
        raise EdgekdError(f"--parallel fsdp does not support the {scheme} scheme ({NO_FSDP_SCHEMES[scheme]}): "
                          f"use --parallel ddp")


def shard(model: nn.Module, device: torch.device) -> nn.Module:
    """fully_shard each decoder layer (the model's _no_split_modules), then the root; in place.

    Parameters become DTensors sharded over all processes; each layer's are gathered for its forward
    (and backward) and freed after it. The root's (embeddings, final norm, LM head) stay gathered from
    forward to backward: the KD loss reads the LM head after forward (hidden states through both heads),
    so its gradient reaches FSDP's own reduce-scatter, averaged like every other. A frozen teacher is
    sharded the same way: forward only.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    units = set(getattr(model, "_no_split_modules", None) or ())
    for m in list(model.modules()):
        if m is not model and type(m).__name__ in units:
            fully_shard(m, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    return model


@contextmanager
def no_gradient_sync(model: nn.Module):
    """FSDP2's no_sync: gradients of this backward stay local (accumulated) until a synced one."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm(params: list, max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ over a mix of sharded (DTensor) and replicated gradients: the global 2-norm."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    device = grads[0].device if grads else torch.device("cpu")
    sharded = torch.zeros((), dtype=torch.float32, device=device)
    local = torch.zeros((), dtype=torch.float32, device=device)
    for g in grads:
        if isinstance(g, DTensor):
            sharded += g.to_local().float().pow(2).sum()
        else:
            local += g.float().pow(2).sum()
    dist.all_reduce(sharded)
    total = (sharded + local).sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        (g.to_local() if isinstance(g, DTensor) else g).mul_(coef.to(g.dtype))
    return total


def full_state(model: nn.Module, optimizer=None) -> tuple[dict, dict | None]:
    """The unsharded model (and optimizer) state on rank 0, on the CPU; collective (every rank calls it).
    Other ranks get empty dicts. Tied parameters appear once (the first name), as safetensors keeps them."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = get_model_state_dict(model, options=opts)
    optim = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return _without_aliases(model, sd), optim


def load_full_state(model: nn.Module, sd: dict, optimizer=None, optim_sd: dict | None = None) -> None:
    """Load a full (unsharded) state, which every rank has read, into the sharded model (and optimizer)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, strict=False)
    missing = set(set_model_state_dict(model, sd, options=opts).missing_keys) - set(_aliases(model))
    if missing:
        raise KeyError(f"checkpoint lacks {sorted(missing)[:3]}")
    if optimizer is not None and optim_sd is not None:
        set_optimizer_state_dict(model, optimizer, optim_state_dict=optim_sd, options=opts)


def gathered(model: nn.Module, plain_cls) -> nn.Module:
    """An ordinary (unsharded) copy of a sharded model on every rank, on the model's device; collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    device = next(iter(sd.values())).device if sd else torch.device("cpu")
    copy = plain_cls(model.config)
    copy.load_state_dict(sd, strict=False)
    return copy.to(device)


def _aliases(model: nn.Module) -> list[str]:
    """Parameter names that repeat an earlier one (tied weights)."""
    seen, out = set(), []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            out.append(name)
        seen.add(id(p))
    return out


def _without_aliases(model: nn.Module, sd: dict) -> dict:
    drop = set(_aliases(model))
    return {k: v.contiguous() for k, v in sd.items() if k not in drop}
