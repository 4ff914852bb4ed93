"""Trains a tiny LM with the real Trainer; run as a subprocess by the resume and torchrun tests.

usage: python train_worker.py CKPT_DIR OUT_FILE [--kill-at STEP] [--resume] [--mask-some] [--micro1]
                              [--steps N] [--kd] [--fsdp]
Under torchrun it joins the gloo group and every rank writes OUT_FILE.rankN. --kd trains with
edgekd's default KD loss against a frozen teacher (final hidden states through both heads); --fsdp shards the student (and that teacher) with FSDP2 instead of DDP.
"""

import os
import signal
import sys

import torch
from safetensors.torch import save_model
from transformers import LlamaConfig, LlamaForCausalLM

from edgekd.data.batching import BlockStream
from edgekd.distill.objective import ce_loss
from edgekd.distill.trainer import TrainConfig, Trainer


class MaskedStream(BlockStream):
    """Some labels ignored, unevenly across sequences: counted tokens differ between ranks."""

    def batch_at(self, position):
        b = super().batch_at(position)
        g = torch.Generator().manual_seed(position * 7)
        per = b["labels"].shape[0]
        cut = torch.randint(2, b["labels"].shape[1], (self.batch_size,), generator=g)[self.rank * per:(self.rank + 1) * per]
        pos = torch.arange(b["labels"].shape[1])[None]
        b["labels"] = torch.where(pos >= cut[:, None], torch.full_like(b["labels"], -100), b["labels"])
        return b


def join_group() -> tuple[int, int]:
    """One CPU thread; under torchrun, join the gloo group. (rank, world)."""
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    dist.init_process_group("gloo")
    return dist.get_rank(), world


def main():
    args = sys.argv[1:]
    ckpt, out = args[0], args[1]
    kill_at = int(args[args.index("--kill-at") + 1]) if "--kill-at" in args else None
    rank, world = join_group()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg)
    tokens = torch.randint(0, 64, (4000,), generator=torch.Generator().manual_seed(1))
    cls = MaskedStream if "--mask-some" in args else BlockStream
    stream = cls(tokens, 16, 4, seed=2, rank=rank, world=world)

    fsdp = "--fsdp" in args
    teacher = None
    if "--kd" in args:
        torch.manual_seed(5)
        teacher = LlamaForCausalLM(cfg).requires_grad_(False).eval()
        if fsdp:
            from edgekd.distill.parallel import shard

            shard(teacher, torch.device("cpu"))
        torch.manual_seed(0)

    def objective(m, batch):
        out_ = m(input_ids=batch["input_ids"])
        loss = ce_loss(out_.logits, batch["labels"], True)
        return loss, {"ce": loss.detach()}

    if teacher is not None:  # edgekd's default loss: KD from both final hidden states through both heads
        from edgekd.distill.objective import DistillObjective, build_response_loss
        from edgekd.distill.schemes import build_scheme

        loss_fn = build_response_loss(None, cfg, cfg, temperature=1.0, alpha=0.5)
        assert loss_fn.needs_last_hidden and not loss_fn.needs_logits
        scheme = build_scheme("offline", teachers=[teacher], student=model)
        scheme.use_loss(loss_fn)
        objective = DistillObjective(loss_fn, scheme, causal=True)

    def on_step(step, tr):
        if kill_at is not None and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    micro = 1 if "--micro1" in args else None
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args else 10
    tc = TrainConfig(steps=steps, batch_size=4, micro_batch_size=micro, lr=1e-2, warmup_steps=2, checkpoint_every=2)
    trainer = Trainer(model, objective, stream, tc, ckpt if ckpt != "-" else None, quiet=True, on_step=on_step,
                      parallel="fsdp" if fsdp else "ddp")
    if fsdp:  # sharded, not replicated: each rank holds half of every decoder layer's weight
        from torch.distributed.tensor import DTensor

        w = model.model.layers[0].mlp.up_proj.weight
        assert isinstance(w, DTensor) and w.to_local().shape[0] == w.shape[0] // world
    if "--resume" in args:
        assert trainer.resume()
    trainer.train()
    if world > 1:
        save_model(trainer.unsharded_model(), f"{out}.rank{rank}")
        torch.distributed.destroy_process_group()
    else:
        save_model(model, out)


if __name__ == "__main__":
    main()
