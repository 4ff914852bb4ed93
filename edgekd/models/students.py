"""Students: a smaller model of the teacher's family, initialised from the teacher.

Depth: the student keeps every k-th teacher layer (DistilBERT). Width: heads, FFN channels and
hidden channels are ranked by their mean activation magnitude on calibration batches and the
strongest are kept (Minitron). Both keep the teacher's knowledge instead of starting from noise.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Iterable, Optional

import torch

from edgekd.errors import EdgekdError

_WIDTH_KEYS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
               "num_hidden_layers", "head_dim")


def default_student_config(teacher_config):
    """About half the teacher's depth and width, keeping the head size (so heads can be copied)."""
    cfg = copy.deepcopy(teacher_config)
    t = teacher_config
    heads = getattr(t, "num_attention_heads", None)
    hidden = t.hidden_size
    head_dim = getattr(t, "head_dim", None) or hidden // heads
    kv = getattr(t, "num_key_value_heads", None) or heads
    s_heads = max(1, heads // 2)
    s_kv = max(1, kv // 2) if kv > 1 else 1
    while s_heads % s_kv:
        s_kv -= 1
    cfg.num_hidden_layers = max(1, (t.num_hidden_layers + 1) // 2)
    cfg.num_attention_heads = s_heads
    if hasattr(t, "num_key_value_heads"):
        cfg.num_key_value_heads = s_kv
    cfg.hidden_size = s_heads * head_dim if head_dim * heads == hidden else max(8, hidden // 2)
    if getattr(t, "head_dim", None) is not None:
        cfg.head_dim = head_dim
    if hasattr(t, "intermediate_size"):
        cfg.intermediate_size = max(8, t.intermediate_size // 2)
    return cfg


def student_config_from(spec, teacher_config):
    """An explicit student config: a JSON file, a model directory, or a dict of overrides."""
    if spec is None:
        return default_student_config(teacher_config)
    if isinstance(spec, dict):
        overrides = spec
    else:
        p = Path(spec)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise EdgekdError(f"student config {spec} does not exist: pass a JSON file of config fields or a model directory")
        try:
            overrides = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EdgekdError(f"student config {p} is not valid JSON ({type(e).__name__}): fix the file") from e
        if not isinstance(overrides, dict):
            raise EdgekdError(f"student config {p} must be a JSON object of config fields")
    mt = overrides.get("model_type")
    if mt and mt != teacher_config.model_type:
        from transformers import AutoConfig

        cfg = AutoConfig.for_model(**overrides)
    else:
        cfg = copy.deepcopy(teacher_config)
        for k, v in overrides.items():
            if k in ("architectures", "transformers_version", "model_type"):
                continue
            setattr(cfg, k, v)
    if getattr(cfg, "vocab_size", None) != teacher_config.vocab_size:
        raise EdgekdError(f"student vocab_size {getattr(cfg, 'vocab_size', None)} differs from the teacher's "
                          f"{teacher_config.vocab_size}: the student must use the teacher's tokenizer")
    heads = getattr(cfg, "num_attention_heads", None)
    if heads and getattr(cfg, "head_dim", None) is None and cfg.hidden_size % heads:
        raise EdgekdError(f"student hidden_size {cfg.hidden_size} is not divisible by num_attention_heads {heads}: fix the student config")
    return cfg


def select_layers(n_teacher: int, n_student: int) -> list[int]:
    """Every k-th teacher layer, k = n_teacher // n_student, starting at 0 (DistilBERT)."""
    if n_student > n_teacher:
        raise EdgekdError(f"the student has {n_student} layers, more than the teacher's {n_teacher}: use fewer layers")
    k = n_teacher // n_student
    return [i * k for i in range(n_student)]


def _llama_like(model) -> bool:
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None or len(layers) == 0:
        return False
    l0 = layers[0]
    return all(hasattr(l0, a) for a in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")) and \
        all(hasattr(l0.self_attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")) and \
        all(hasattr(l0.mlp, a) for a in ("gate_proj", "up_proj", "down_proj"))


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


@torch.no_grad()
def measure_importance(teacher, batches: Iterable[dict]) -> dict:
    """Mean |activation| per head (o_proj input), per FFN channel (down_proj input) and per hidden
    channel (input of every RMSNorm-normalised sublayer), on calibration batches."""
    cfg = teacher.config
    hd = _head_dim(cfg)
    layers = teacher.model.layers
    imp = {"heads": [torch.zeros(cfg.num_attention_heads) for _ in layers],
           "ffn": [torch.zeros(cfg.intermediate_size) for _ in layers],
           "hidden": torch.zeros(cfg.hidden_size)}
    hooks = []

    def pre_hook(key, i):
        def f(mod, args):
            x = args[0].detach().float().abs()
            if key == "heads":
                imp["heads"][i] += x.reshape(*x.shape[:-1], -1, hd).norm(dim=-1).reshape(-1, x.shape[-1] // hd).mean(0)
            elif key == "ffn":
                imp["ffn"][i] += x.reshape(-1, x.shape[-1]).mean(0)
        return f

    def norm_hook(mod, args, out):
        imp["hidden"] += out.detach().float().abs().reshape(-1, out.shape[-1]).mean(0)

    for i, layer in enumerate(layers):
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(pre_hook("heads", i)))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(pre_hook("ffn", i)))
        hooks.append(layer.input_layernorm.register_forward_hook(norm_hook))
        hooks.append(layer.post_attention_layernorm.register_forward_hook(norm_hook))
    if hasattr(teacher.model, "norm"):
        hooks.append(teacher.model.norm.register_forward_hook(norm_hook))
    was_training = teacher.training
    teacher.eval()
    try:
        n = 0
        for b in batches:
            teacher(input_ids=b["input_ids"], attention_mask=b.get("attention_mask"))
            n += 1
        if n == 0:
            raise EdgekdError("no calibration batches for width pruning: the training data is empty")
    finally:
        for h in hooks:
            h.remove()
        teacher.train(was_training)
    return imp


def _topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, k).indices).values


@torch.no_grad()
def init_from_teacher(student, teacher, importance: Optional[dict] = None) -> dict:
    """Copy selected layers and the most important heads/channels of the teacher into the student.

    Returns what was chosen (layer indices, kept hidden channels, ...) for the run's config.
    """
    tc, sc = teacher.config, student.config
    chosen: dict = {"method": "random"}
    if not (_llama_like(teacher) and _llama_like(student)) or type(teacher) is not type(student):
        return chosen
    if _head_dim(tc) != _head_dim(sc):
        return {"method": "random", "why": "head size differs from the teacher's"}
    t_kv = getattr(tc, "num_key_value_heads", tc.num_attention_heads)
    s_kv = getattr(sc, "num_key_value_heads", sc.num_attention_heads)
    t_group, s_group = tc.num_attention_heads // t_kv, sc.num_attention_heads // s_kv
    if t_group != s_group or s_kv > t_kv or sc.intermediate_size > tc.intermediate_size \
            or sc.hidden_size > tc.hidden_size:
        return {"method": "random", "why": "student is not a narrowing of the teacher"}
    hd = _head_dim(tc)
    layers = select_layers(tc.num_hidden_layers, sc.num_hidden_layers)
    if importance is None:  # no calibration data: keep the first channels
        importance = {"heads": [torch.arange(tc.num_attention_heads, 0, -1).float()] * tc.num_hidden_layers,
                      "ffn": [torch.arange(tc.intermediate_size, 0, -1).float()] * tc.num_hidden_layers,
                      "hidden": torch.arange(tc.hidden_size, 0, -1).float()}
    hid = _topk_sorted(importance["hidden"], sc.hidden_size)
    chosen = {"method": "teacher", "layers": layers, "hidden_kept": len(hid), "heads_kept": {}, "ffn_kept": {}}

    tm, sm = teacher.model, student.model
    sm.embed_tokens.weight.copy_(tm.embed_tokens.weight[:, hid])
    if hasattr(tm, "norm"):
        sm.norm.weight.copy_(tm.norm.weight[hid])
    for head_name in ("lm_head", "score"):
        th, sh = getattr(teacher, head_name, None), getattr(student, head_name, None)
        if th is not None and sh is not None and th.weight.shape[0] == sh.weight.shape[0]:
            if not (getattr(sc, "tie_word_embeddings", False) and head_name == "lm_head"):
                sh.weight.copy_(th.weight[:, hid])
            if getattr(th, "bias", None) is not None and getattr(sh, "bias", None) is not None:
                sh.bias.copy_(th.bias)
    for si, ti in enumerate(layers):
        tl, sl = tm.layers[ti], sm.layers[si]
        # Heads: rank KV groups by the summed importance of their query heads.
        h_imp = importance["heads"][ti].reshape(t_kv, t_group).sum(1)
        kv_keep = _topk_sorted(h_imp, s_kv)
        q_heads = (kv_keep[:, None] * t_group + torch.arange(t_group)[None]).reshape(-1)
        q_rows = (q_heads[:, None] * hd + torch.arange(hd)[None]).reshape(-1)
        kv_rows = (kv_keep[:, None] * hd + torch.arange(hd)[None]).reshape(-1)
        ta, sa = tl.self_attn, sl.self_attn
        for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            tw, sw = getattr(ta, name), getattr(sa, name)
            sw.weight.copy_(tw.weight[rows][:, hid])
            if tw.bias is not None and sw.bias is not None:
                sw.bias.copy_(tw.bias[rows])
        sa.o_proj.weight.copy_(ta.o_proj.weight[hid][:, q_rows])
        if ta.o_proj.bias is not None and sa.o_proj.bias is not None:
            sa.o_proj.bias.copy_(ta.o_proj.bias[hid])
        for nm in ("q_norm", "k_norm"):  # Qwen3-style per-head norms
            if hasattr(ta, nm) and hasattr(sa, nm):
                getattr(sa, nm).weight.copy_(getattr(ta, nm).weight)
        ffn = _topk_sorted(importance["ffn"][ti], sc.intermediate_size)
        sl.mlp.gate_proj.weight.copy_(tl.mlp.gate_proj.weight[ffn][:, hid])
        sl.mlp.up_proj.weight.copy_(tl.mlp.up_proj.weight[ffn][:, hid])
        sl.mlp.down_proj.weight.copy_(tl.mlp.down_proj.weight[hid][:, ffn])
        sl.input_layernorm.weight.copy_(tl.input_layernorm.weight[hid])
        sl.post_attention_layernorm.weight.copy_(tl.post_attention_layernorm.weight[hid])
        chosen["heads_kept"][si] = q_heads.tolist()
        chosen["ffn_kept"][si] = len(ffn)
    return chosen


def build_student(teacher, student_config=None, calibration: Optional[Iterable[dict]] = None,
                  init: str = "teacher", seed: int = 0):
    """(student, init_info): the student model of the teacher's class, initialised from the teacher."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = student_config if student_config is not None else default_student_config(teacher.config)
    if getattr(cfg, "vocab_size", None) != teacher.config.vocab_size:
        raise EdgekdError(f"student vocab_size {getattr(cfg, 'vocab_size', None)} differs from the teacher's "
                          f"{teacher.config.vocab_size}: the student must use the teacher's tokenizer")
    torch.manual_seed(seed)
    if cfg.model_type == teacher.config.model_type:
        student = type(teacher)(cfg)
    else:
        classification = "ForSequenceClassification" in type(teacher).__name__
        auto = AutoModelForSequenceClassification if classification else AutoModelForCausalLM
        student = auto.from_config(cfg)
    info = {"method": "random"}
    if init == "teacher":
        imp = measure_importance(teacher, calibration) if calibration is not None and _llama_like(teacher) else None
        info = init_from_teacher(student, teacher, imp)
    elif init != "random":
        raise EdgekdError(f"unknown student init {init!r}: use 'teacher' or 'random'")
    return student, info


def check_tokenizers_agree(teacher_tok, student_tok, where: str = "student") -> None:
    """Same token -> id map, or the logits of teacher and student mean different things."""
    from edgekd.data.tokenizer import vocab_signature

    if teacher_tok is None or student_tok is None:
        return
    if vocab_signature(teacher_tok) != vocab_signature(student_tok):
        raise EdgekdError(f"the {where}'s tokenizer differs from the teacher's (vocabularies of {len(student_tok)} "
                          f"and {len(teacher_tok)} tokens do not map tokens to the same ids): use the teacher's tokenizer")


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def size_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
