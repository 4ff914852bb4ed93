"""Sequence-level distillation (Kim & Rush, 2016): the student trains on the teacher's generations."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from edgekd.distill.schemes.base import Plan, Stage, register_scheme, split_options
from edgekd.distill.schemes.offline import OfflineScheme, with_cache_data
from edgekd.errors import EdgekdError
from edgekd.losses import unwrap
from edgekd.report.sections import register_section


class SequenceData:
    """Teacher generations as training data: prompt + continuation per example.

    `self[i]` is {"input_ids", "labels"} (labels -100 on the prompt unless loss_on_prompt);
    `tokens(eos)` joins them with EOS into the 1-D stream edgekd.data.batching.BlockStream takes;
    `batches(n, pad)` yields padded {"input_ids", "attention_mask", "labels"} dicts.
    """

    def __init__(self, sequences: list[torch.Tensor], prompt_lengths: list[int], loss_on_prompt: bool = False):
        self.sequences, self.prompt_lengths, self.loss_on_prompt = sequences, prompt_lengths, loss_on_prompt

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict:
        ids = self.sequences[i]
        labels = ids.clone()
        if not self.loss_on_prompt:
            labels[: self.prompt_lengths[i]] = -100
        return {"input_ids": ids, "labels": labels}

    def continuation(self, i: int) -> torch.Tensor:
        return self.sequences[i][self.prompt_lengths[i]:]

    def tokens(self, eos_token_id: int) -> torch.Tensor:
        parts = []
        for s in self.sequences:
            parts.append(s)
            if s.numel() == 0 or int(s[-1]) != eos_token_id:
                parts.append(torch.tensor([eos_token_id]))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def batches(self, batch_size: int, pad_token_id: int = 0):
        for b in range(0, len(self), batch_size):
            items = [self[i] for i in range(b, min(b + batch_size, len(self)))]
            L = max(len(it["input_ids"]) for it in items)
            ids = torch.full((len(items), L), pad_token_id, dtype=torch.long)
            labels = torch.full((len(items), L), -100, dtype=torch.long)
            mask = torch.zeros(len(items), L, dtype=torch.long)
            for i, it in enumerate(items):
                n = len(it["input_ids"])
                ids[i, :n], labels[i, :n], mask[i, :n] = it["input_ids"], it["labels"], 1
            yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def generate_sequence_data(teacher: nn.Module, prompts: Sequence, *, max_new_tokens: int = 64, do_sample: bool = False,
                           seed: int = 0, temperature: float = 1.0, top_k: Optional[int] = None,
                           top_p: Optional[float] = None, batch_size: int = 8, eos_token_id: Optional[int] = None,
                           pad_token_id: Optional[int] = None, stop_at_eos: bool = True, tokenizer=None,
                           loss_on_prompt: bool = False) -> SequenceData:
    """Sequence-level KD (Kim & Rush, 2016): the teacher's continuations of prompts, as a data set.

    Greedy by default; sampling is seeded (the global RNG is left as it was). Prompts are token-id
    lists/tensors, or strings with `tokenizer`. A continuation stops after the first EOS (the
    config's unless eos_token_id is given), or runs max_new_tokens when stop_at_eos is False.
    """
    from transformers import GenerationConfig

    model = unwrap(teacher)
    cfg = getattr(model, "config", None)
    eos = eos_token_id if eos_token_id is not None else getattr(cfg, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if not stop_at_eos:
        eos = None
    pad = pad_token_id if pad_token_id is not None else (getattr(cfg, "pad_token_id", None) or (eos if eos is not None else 0))
    encoded = []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise EdgekdError("sequence-level KD: text prompts need a tokenizer")
            p = tokenizer(p, add_special_tokens=False)["input_ids"]
        t = torch.as_tensor(p, dtype=torch.long).reshape(-1)
        if t.numel() == 0:
            raise EdgekdError("sequence-level KD: a prompt is empty")
        encoded.append(t)
    if not encoded:
        raise EdgekdError("sequence-level KD: no prompts given")
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad, eos_token_id=eos,
                           **({"temperature": temperature, "top_k": top_k or 0, "top_p": top_p or 1.0}
                              if do_sample else {}))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sequences = []
    saved_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None and saved_eos is not None:  # generate() fills an unset EOS from the model's own config
        model.generation_config.eos_token_id = None
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for b in range(0, len(encoded), batch_size):
                rows = encoded[b:b + batch_size]
                P = max(len(r) for r in rows)
                ids = torch.full((len(rows), P), pad, dtype=torch.long)
                mask = torch.zeros(len(rows), P, dtype=torch.long)
                for i, r in enumerate(rows):  # left padding: generation continues right after each prompt
                    ids[i, P - len(r):], mask[i, P - len(r):] = r, 1
                with torch.no_grad():
                    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen)
                for i, r in enumerate(rows):
                    cont = out[i, P:].cpu()
                    if eos is not None:
                        hit = (cont == eos).nonzero()
                        if len(hit):
                            cont = cont[: int(hit[0]) + 1]
                    sequences.append(torch.cat([r, cont]))
    finally:
        model.train(was_training)
        if saved_eos is not None:
            model.generation_config.eos_token_id = saved_eos
    return SequenceData(sequences, [len(r) for r in encoded], loss_on_prompt)


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise EdgekdError(f"scheme 'sequence': {name} must be a positive integer, got {v!r}")
    return v


def _saved_or_generated(run, path, prompts, new: int, do_sample: bool, seed: int) -> SequenceData:
    """The run's generations: read back from RUN/sequences.safetensors on --resume, else generated
    (and saved by rank 0)."""
    from safetensors.torch import load_file, save_file

    from edgekd.io import atomic_path

    if run.cfg.resume and path.is_file():
        saved = load_file(str(path))
        offsets = saved["offsets"].tolist()
        return SequenceData([saved["tokens"][a:b] for a, b in zip(offsets, offsets[1:])],
                            saved["prompt_lengths"].tolist())
    seqs = generate_sequence_data(run.teacher, prompts(), max_new_tokens=new, do_sample=do_sample, seed=seed)
    if run.rank == 0:
        lengths = torch.tensor([0] + [len(x) for x in seqs.sequences], dtype=torch.int64)
        with atomic_path(path) as tmp:
            save_file({"tokens": torch.cat(seqs.sequences).contiguous(), "offsets": lengths.cumsum(0),
                       "prompt_lengths": torch.tensor(seqs.prompt_lengths, dtype=torch.int64)}, str(tmp))
    return seqs


@register_scheme("sequence")
class SequenceScheme(OfflineScheme):
    """Train on the teacher's continuations (greedy, or seeded sampling) of `num_prompts` prompts of
    `prompt_len` tokens cut from random training blocks, joined with EOS into the BlockStream the student
    trains on (labels on every token: the prompts are real training text), with word-level KD from the
    same frozen teacher.

    With the default 'kd' loss that is word-level KD against the teacher's logits on the generated text
    on top of the sequence-level data; with alpha = 0 it is the hard-label CE on the generations alone
    (pure sequence-level KD). The scratch baseline trains on the original corpus: what one gets without
    the teacher. The sequences are saved to RUN/sequences.safetensors and read back on --resume."""

    plan_options = ("num_prompts", "prompt_len", "max_new_tokens", "do_sample", "seed")

    @classmethod
    def plan(cls, run) -> Plan:
        from edgekd.models.loading import CAUSAL_LM

        if run.kind != CAUSAL_LM:
            raise EdgekdError("scheme 'sequence' trains on the teacher's generations: it needs a causal LM teacher, "
                              "not a classifier")
        options, opts = split_options(cls, run.cfg.scheme_config)
        stream, info = cls.generated_stream(run, opts)
        stage = Stage("distill", run.student_config, run.steps, "distill", stream, [run.teacher], options)
        return with_cache_data(Plan([stage], {"sequence": info}))

    @classmethod
    def generated_stream(cls, run, opts: dict):
        """(the BlockStream of the teacher's generations, what report.json says of them)."""
        from edgekd.data.batching import BlockStream

        seq_len = run.data.seq_len
        num = _positive_int("num_prompts", opts.get("num_prompts", 64))
        plen = _positive_int("prompt_len", opts.get("prompt_len", min(32, max(1, seq_len // 2))))
        new = _positive_int("max_new_tokens", opts.get("max_new_tokens", 64))
        do_sample, seed = bool(opts.get("do_sample", False)), int(opts.get("seed", run.cfg.seed))
        blocks = run.data.stream().blocks
        plen = min(plen, blocks.shape[1])

        def prompts():
            pick = torch.randperm(blocks.shape[0], generator=torch.Generator().manual_seed(seed))[:num]
            return [blocks[i, :plen] for i in pick.tolist()]

        path = run.out / "sequences.safetensors"
        seqs = _saved_or_generated(run, path, prompts, new, do_sample, seed)
        eos = run.tokenizer.eos_token_id if run.tokenizer is not None and run.tokenizer.eos_token_id is not None \
            else run.teacher.config.eos_token_id
        tokens = seqs.tokens(int(eos[0] if isinstance(eos, (list, tuple)) else eos))
        if tokens.numel() < seq_len:
            raise EdgekdError(f"scheme 'sequence': the teacher generated {tokens.numel()} tokens, fewer than one block "
                              f"of {seq_len}: raise num_prompts or max_new_tokens, or lower --seq-len")
        info = {"num_sequences": len(seqs), "prompt_len": plen, "max_new_tokens": new, "do_sample": do_sample,
                "seed": seed, "generated_tokens": sum(len(seqs.continuation(i)) for i in range(len(seqs))),
                "train_tokens": int(tokens.numel()), "path": str(path)}
        cfg = run.cfg
        return BlockStream(tokens, seq_len, cfg.batch_size, cfg.seed, run.rank, run.world), info

    def generate(self, prompts: Sequence, **kw) -> SequenceData:
        return generate_sequence_data(self.teacher, prompts, **kw)


@register_section("sequence", 80)
def sequence_section(rep: dict, kind: str) -> list[str]:
    """report.md: what the student trained on (report.json's distillation.sequence)."""
    seq = rep["distillation"].get("sequence")
    if not seq:
        return []
    return [f"Sequence-level KD: the student trained on the teacher's continuations of {seq.get('num_sequences')} "
            f"training prompts ({seq.get('generated_tokens')} generated tokens, {seq.get('train_tokens')} "
            f"training tokens with the prompts).", ""]
