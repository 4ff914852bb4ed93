"""Encoder-decoder (translation) teachers and their students: Marian and BART.

Both keep their stacks at model.encoder.layers / model.decoder.layers and name their sizes alike
(encoder_layers, decoder_layers, d_model, *_ffn_dim, *_attention_heads), so one rule serves them: the
student is the teacher's class with fewer layers (every k-th teacher layer, `select_layers`) and, if
asked, narrower; every tensor whose shape the student shares with its teacher is copied.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from edgekd.errors import EdgekdError
from edgekd.models.arch import SEQ2SEQ_FAMILIES, is_seq2seq, register_param_count, select_layers

__all__ = ["SEQ2SEQ_FAMILIES", "SEQ2SEQ_SIZES", "is_seq2seq", "seq2seq_student_config", "seq2seq_param_count",
           "init_from_teacher", "greedy_generation_config", "translate"]
# The sizes a --student may set (the families' own names); everything else is the teacher's.
SEQ2SEQ_SIZES = ("encoder_layers", "decoder_layers", "d_model", "encoder_ffn_dim", "decoder_ffn_dim",
                 "encoder_attention_heads", "decoder_attention_heads")
STACKS = ("encoder", "decoder")


def seq2seq_student_config(teacher_config, overrides: Mapping[str, Any] | None = None):
    """The student's config: half the teacher's encoder and decoder layers (at least one each) and its width,
    unless `overrides` (SEQ2SEQ_SIZES) say otherwise; an invalid combination is one line."""
    theirs = teacher_config.to_dict()
    unknown = sorted(k for k, v in (overrides or {}).items()  # a model folder's config repeats the teacher's fields
                     if k not in SEQ2SEQ_SIZES and k not in ("model_type", "architectures", "transformers_version")
                     and v != theirs.get(k))
    if unknown:
        raise EdgekdError(f"--student sets {', '.join(unknown)}, which a {teacher_config.model_type} student does not "
                          f"take: set {', '.join(SEQ2SEQ_SIZES)}")
    if (overrides or {}).get("model_type", teacher_config.model_type) != teacher_config.model_type:
        raise EdgekdError(f"a {teacher_config.model_type} teacher distils into a {teacher_config.model_type} student, "
                          f"not {overrides['model_type']}")
    sizes = {f"{s}_layers": max(1, (getattr(teacher_config, f"{s}_layers") + 1) // 2) for s in STACKS}
    sizes |= {k: v for k, v in (overrides or {}).items() if k in SEQ2SEQ_SIZES}
    for s in STACKS:
        n, t = sizes[f"{s}_layers"], getattr(teacher_config, f"{s}_layers")
        if not isinstance(n, int) or not 1 <= n <= t:
            raise EdgekdError(f"student {s}_layers must be an integer from 1 to the teacher's {t}, got {n!r}")
        heads = sizes.get(f"{s}_attention_heads", getattr(teacher_config, f"{s}_attention_heads"))
        if sizes.get("d_model", teacher_config.d_model) % heads:
            raise EdgekdError(f"student d_model {sizes.get('d_model', teacher_config.d_model)} is not divisible by "
                              f"{s}_attention_heads {heads}: fix the student config")
    d = teacher_config.to_dict() | sizes
    d.pop("num_hidden_layers", None)  # derived from encoder_layers again
    return type(teacher_config)(**d)


def seq2seq_param_count(config) -> int:
    """Parameters of the model a config describes, counted on a model built without memory (meta device)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    cfg = AutoConfig.for_model(**config) if isinstance(config, Mapping) else config
    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def init_from_teacher(student, teacher) -> dict:
    """Copy the teacher into the student: student layer i of each stack from teacher layer select_layers(...)[i],
    everything outside the stacks by name; tensors whose shapes differ (a narrower student) keep their random
    start. Returns init_info: the layers kept and what was copied."""
    kept = {s: select_layers(getattr(teacher.config, f"{s}_layers"), getattr(student.config, f"{s}_layers"))
            for s in STACKS}
    t_state = teacher.state_dict()
    copied, fresh = 0, []
    with torch.no_grad():
        for name, p in student.state_dict().items():
            src = _teacher_name(name, kept)
            t = t_state.get(src)
            if t is not None and t.shape == p.shape:
                p.copy_(t)
                copied += 1
            else:
                fresh.append(name)
    if not copied:
        return {"method": "random", "why": "no tensor of the student has its teacher's shape"}
    return {"method": "teacher", "layers": kept, "tensors_copied": copied, "tensors_random": len(fresh),
            "width": "same" if not fresh else "narrower (tensors of other shapes start random)"}


def _teacher_name(name: str, kept: dict) -> str:
    """The teacher's name of a student tensor: model.encoder.layers.1.x -> model.encoder.layers.K.x."""
    parts = name.split(".")
    for i in range(len(parts) - 2):
        if parts[i] in STACKS and parts[i + 1] == "layers" and parts[i + 2].isdigit():
            parts[i + 2] = str(kept[parts[i]][int(parts[i + 2])])
            break
    return ".".join(parts)


def greedy_generation_config(model, max_new_tokens: int):
    """Plain greedy decoding, the same for PyTorch and the ONNX export: the model's start, end and pad tokens
    and nothing else (no beam search, no bad-word or forced-token rules that a teacher's saved config may add)."""
    from transformers import GenerationConfig

    c = model.config
    return GenerationConfig(decoder_start_token_id=c.decoder_start_token_id, eos_token_id=c.eos_token_id,
                            pad_token_id=c.pad_token_id, num_beams=1, do_sample=False, max_new_tokens=max_new_tokens)


@torch.no_grad()
def translate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
              batch_size: int = 32) -> list[list[int]]:
    """Greedy translations of a batch of encoded sources by PyTorch's `generate`: each one's token ids after
    the decoder start, up to and including the end token."""
    was = model.training
    model.eval()
    gen = greedy_generation_config(model, max_new_tokens)
    dev = next(model.parameters()).device
    out = []
    try:
        for i in range(0, len(input_ids), batch_size):
            ids = model.generate(input_ids=input_ids[i:i + batch_size].to(dev),
                                 attention_mask=attention_mask[i:i + batch_size].to(dev), generation_config=gen)
            out.extend(_until_eos(row[1:].tolist(), gen.eos_token_id) for row in ids)
    finally:
        model.train(was)
    return out


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[:ids.index(eos) + 1] if eos in ids else ids


register_param_count(SEQ2SEQ_FAMILIES, seq2seq_param_count)
