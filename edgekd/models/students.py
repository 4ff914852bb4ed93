"""Students: a smaller model of the teacher's family, initialised from the teacher.

Depth: the student keeps every k-th teacher layer (DistilBERT). Width: heads, FFN channels and
hidden channels are ranked by their mean activation magnitude on calibration batches and the
strongest are kept (Minitron). Both keep the teacher's knowledge instead of starting from noise.
Every supported family (Llama, Mistral, Qwen2/3, Gemma/2/3, Phi-3, GPT-2, OPT, BERT, DistilBERT) is
initialised this way; edgekd.models.arch reads and writes their configs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from edgekd.models.specs import student_overrides
from edgekd.errors import EdgekdError
from edgekd.models import seq2seq
from edgekd.models.vision import (image_student_config, init_from_image_teacher, is_image_classifier,
                                 measure_channel_importance)
from edgekd.models.arch import (BILSTM_MODEL_TYPE, arch_of, model_type_of, narrowing_problem, select_layers,
                                with_arch)


def default_student_config(teacher_config):
    """About half the teacher's depth and width, keeping the head size (so heads can be copied) and the
    teacher's query/key-value grouping; per-layer config lists follow the kept layers."""
    a = arch_of(teacher_config)
    heads, hidden, head_dim, kv = (a["num_attention_heads"], a["hidden_size"], a["head_dim"],
                                   a["num_key_value_heads"])
    s_heads = max(1, heads // 2)
    s_kv = max(1, kv // 2) if kv > 1 else 1
    while s_heads % s_kv:
        s_kv -= 1
    overrides = {"num_hidden_layers": max(1, (a["num_hidden_layers"] + 1) // 2), "num_attention_heads": s_heads,
                 "num_key_value_heads": s_kv, "head_dim": head_dim,
                 "hidden_size": s_heads * head_dim if head_dim * heads == hidden else max(8, hidden // 2),
                 "intermediate_size": max(8, a["intermediate_size"] // 2)}
    return with_arch(teacher_config, overrides)


_NOT_CONFIG_FIELDS = ("architectures", "transformers_version", "model_type")


def student_config_from(spec, teacher_config):
    """An explicit student config: a JSON file, a model directory, a dict of overrides (canonical
    names such as hidden_size, or the family's own such as n_embd), or 'bilstm' (edgekd's BiLSTM classifier,
    sized from a classifier teacher)."""
    if seq2seq.is_seq2seq(teacher_config):  # an encoder-decoder: its own sizes (edgekd.models.seq2seq)
        return seq2seq.seq2seq_student_config(teacher_config, None if spec is None else student_overrides(spec))
    if is_image_classifier(teacher_config):  # an image classifier: its family's stages and channels, or the CNN
        return image_student_config(None if spec is None else student_overrides(spec), teacher_config,
                                    getattr(teacher_config, "image_size", None) or 224)
    if spec is None:
        return default_student_config(teacher_config)
    overrides = student_overrides(spec)  # the one reader of --student (models/specs.py), so the CLI and the API agree
    mt = overrides.get("model_type")
    if mt == BILSTM_MODEL_TYPE:
        from edgekd.models.bilstm import bilstm_config

        return bilstm_config(teacher_config, overrides)
    if mt and mt != teacher_config.model_type:
        from transformers import AutoConfig

        cfg = AutoConfig.for_model(**overrides)
    else:
        cfg = with_arch(teacher_config, {k: v for k, v in overrides.items() if k not in _NOT_CONFIG_FIELDS})
    a = arch_of(cfg)
    if a["vocab_size"] != teacher_config.vocab_size:
        raise EdgekdError(f"student vocab_size {a['vocab_size']} differs from the teacher's "
                          f"{teacher_config.vocab_size}: the student must use the teacher's tokenizer")
    heads = a["num_attention_heads"]
    if heads and getattr(cfg, "head_dim", None) is None and a["hidden_size"] % heads:
        raise EdgekdError(f"student hidden_size {a['hidden_size']} is not divisible by num_attention_heads {heads}: "
                          f"fix the student config")
    return cfg


# --- initialising a student from its teacher ------------------------------------------------------
#
# Depth: every parameter outside the layer stack is copied, and student layer i gets teacher layer
# select_layers(...)[i]. Width: each parameter axis is an index space: "h" hidden channels, "q" query
# rows (kept heads x head size), "kv" key/value rows, "f" FFN channels, "qkv"/"ff2" the fused
# [q|k|v] and [gate|up] matrices; an axis not named by a family rule is "h" where it has the hidden
# size and is kept whole where teacher and student agree. Channels are ranked by mean |activation| on
# calibration batches: heads at the attention output projection's input, FFN channels at the down
# projection's input, hidden channels at every norm's output (Minitron).


@dataclass(frozen=True)
class PruneSpec:
    rules: tuple  # (regex on the layer-relative parameter name, spaces of the weight's axes)
    attn_out: str  # layer-relative module whose input is the concatenated heads
    ffn_out: str  # layer-relative module whose input is the FFN channels
    transposed: bool = False  # GPT-2's Conv1D: weight [in, out], so a bias lies on the last axis


_LLAMA = PruneSpec(rules=((r"self_attn\.q_proj\.", ("q", "h")), (r"self_attn\.[kv]_proj\.", ("kv", "h")),
                          (r"self_attn\.qkv_proj\.", ("qkv", "h")), (r"self_attn\.o_proj\.", ("h", "q")),
                          (r"mlp\.(gate|up)_proj\.", ("f", "h")), (r"mlp\.gate_up_proj\.", ("ff2", "h")),
                          (r"mlp\.down_proj\.", ("h", "f"))),
                   attn_out="self_attn.o_proj", ffn_out="mlp.down_proj")
PRUNE_SPECS = {
    **{mt: _LLAMA for mt in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")},
    "gpt2": PruneSpec(rules=((r"attn\.c_attn\.", ("h", "qkv")), (r"attn\.c_proj\.", ("q", "h")),
                             (r"mlp\.c_fc\.", ("h", "f")), (r"mlp\.c_proj\.", ("f", "h"))),
                      attn_out="attn.c_proj", ffn_out="mlp.c_proj", transposed=True),
    "opt": PruneSpec(rules=((r"self_attn\.[qkv]_proj\.", ("q", "h")), (r"self_attn\.out_proj\.", ("h", "q")),
                            (r"fc1\.", ("f", "h")), (r"fc2\.", ("h", "f"))),
                     attn_out="self_attn.out_proj", ffn_out="fc2"),
    "bert": PruneSpec(rules=((r"attention\.self\.(query|key|value)\.", ("q", "h")),
                             (r"attention\.output\.dense\.", ("h", "q")), (r"intermediate\.dense\.", ("f", "h")),
                             (r"output\.dense\.", ("h", "f"))),
                      attn_out="attention.output.dense", ffn_out="output.dense"),
    "distilbert": PruneSpec(rules=((r"attention\.[qkv]_lin\.", ("q", "h")), (r"attention\.out_lin\.", ("h", "q")),
                                   (r"ffn\.lin1\.", ("f", "h")), (r"ffn\.lin2\.", ("h", "f"))),
                            attn_out="attention.out_lin", ffn_out="ffn.lin2"),
}


def _llama_like(model) -> bool:
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None or len(layers) == 0:
        return False
    l0 = layers[0]
    return all(hasattr(l0, a) for a in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")) and \
        all(hasattr(l0.self_attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")) and \
        all(hasattr(l0.mlp, a) for a in ("gate_proj", "up_proj", "down_proj"))


def prune_spec(model) -> Optional[PruneSpec]:
    """How the family's parameters are pruned in width; None where edgekd does not know the family."""
    spec = PRUNE_SPECS.get(model_type_of(model.config))
    return spec if spec is not None else (_LLAMA if _llama_like(model) else None)


def layer_stack(model) -> Optional[tuple[str, torch.nn.ModuleList]]:
    """(name, ModuleList) of the model's transformer layers: the outermost list with one entry per layer."""
    n = arch_of(model.config)["num_hidden_layers"]
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return name, mod
    return None


def _is_norm(name: str, mod) -> bool:
    return "norm" in type(mod).__name__.lower() and not name.endswith(("q_norm", "k_norm"))


@torch.no_grad()
def measure_importance(teacher, batches: Iterable[dict]) -> dict:
    """Mean |activation| per head (input of the attention output projection), per FFN channel (input of
    the down projection) and per hidden channel (output of every norm), on calibration batches."""
    a = arch_of(teacher.config)
    spec, stack = prune_spec(teacher), layer_stack(teacher)
    if spec is None or stack is None:
        raise EdgekdError(f"width pruning does not know the {a['model_type']} family: give a student of the "
                          f"teacher's widths (fewer layers only), or init 'random'")
    hd, nh, h = a["head_dim"], a["num_attention_heads"], a["hidden_size"]
    layers = stack[1]
    imp = {"heads": [torch.zeros(nh) for _ in layers], "ffn": [torch.zeros(a["intermediate_size"]) for _ in layers],
           "hidden": torch.zeros(h)}
    hooks = []

    def pre_hook(key, i):
        def f(mod, args):
            x = args[0].detach().float().abs()
            if key == "heads":
                imp["heads"][i] += x.reshape(-1, nh, hd).norm(dim=-1).mean(0)
            else:
                imp["ffn"][i] += x.reshape(-1, x.shape[-1]).mean(0)
        return f

    def norm_hook(mod, args, out):
        out = out[0] if isinstance(out, tuple) else out
        if out.shape[-1] == h:
            imp["hidden"] += out.detach().float().abs().reshape(-1, h).mean(0)

    for i, layer in enumerate(layers):
        hooks.append(layer.get_submodule(spec.attn_out).register_forward_pre_hook(pre_hook("heads", i)))
        hooks.append(layer.get_submodule(spec.ffn_out).register_forward_pre_hook(pre_hook("ffn", i)))
    for name, mod in teacher.named_modules():
        if _is_norm(name, mod):
            hooks.append(mod.register_forward_hook(norm_hook))
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
        for hk in hooks:
            hk.remove()
        teacher.train(was_training)
    return imp


def _topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, k).indices).values


def _rows(units: torch.Tensor, size: int) -> torch.Tensor:
    return (units[:, None] * size + torch.arange(size)[None]).reshape(-1)


def _spaces(rel: str, ndim: int, spec: Optional[PruneSpec]) -> Optional[tuple]:
    for pattern, spaces in (spec.rules if spec else ()):
        if re.match(pattern, rel):
            if ndim == 1:
                return (spaces[-1] if spec.transposed else spaces[0],)
            return spaces if ndim == len(spaces) else None
    return None


@torch.no_grad()
def init_from_teacher(student, teacher, importance: Optional[dict] = None) -> dict:
    """Copy the selected layers and the most important heads/channels of the teacher into the student.

    Returns what was chosen (method "teacher", layer indices, kept channels) for the run's config, or
    {"method": "random", "why": ...} where the student cannot be initialised from this teacher (the
    student is then left as it was built)."""
    if type(teacher) is not type(student):
        return {"method": "random", "why": f"the student's class ({type(student).__name__}) is not the "
                                           f"teacher's ({type(teacher).__name__})"}
    ta, sa = arch_of(teacher.config), arch_of(student.config)
    problem = narrowing_problem(ta, sa)
    t_stack, s_stack = layer_stack(teacher), layer_stack(student)
    if problem is None and (t_stack is None or s_stack is None or t_stack[0] != s_stack[0]):
        problem = f"edgekd finds no layer stack in {type(teacher).__name__}"
    same_width = all(ta[k] == sa[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                              "num_key_value_heads"))
    spec = prune_spec(teacher)
    if problem is None and not same_width and spec is None:
        problem = (f"width pruning is not supported for the {ta['model_type']} family (only a student of the "
                   f"teacher's widths, with fewer layers, starts from the teacher)")
    if problem:
        return {"method": "random", "why": f"the student cannot start from the teacher: {problem}"}
    prefix = t_stack[0] + "."
    layers = select_layers(ta["num_hidden_layers"], sa["num_hidden_layers"])
    hd, t_h, t_f = ta["head_dim"], ta["hidden_size"], ta["intermediate_size"]
    t_kv, s_kv = ta["num_key_value_heads"], sa["num_key_value_heads"]
    t_group, s_group = ta["num_attention_heads"] // t_kv, sa["num_attention_heads"] // s_kv
    if importance is None:  # no calibration data: keep the first channels
        importance = {"heads": [torch.arange(ta["num_attention_heads"], 0, -1).float()] * ta["num_hidden_layers"],
                      "ffn": [torch.arange(t_f, 0, -1).float()] * ta["num_hidden_layers"],
                      "hidden": torch.arange(t_h, 0, -1).float()}
    hid = _topk_sorted(importance["hidden"], sa["hidden_size"])
    per_layer: dict[int, dict] = {}
    heads_kept = {}
    for si, ti in enumerate(layers):
        groups = importance["heads"][ti].reshape(t_kv, t_group)
        kv_keep = _topk_sorted(groups.sum(1), s_kv)
        q_heads = torch.cat([g * t_group + _topk_sorted(groups[g], s_group) for g in kv_keep.tolist()])
        q, kv = _rows(q_heads, hd), _rows(kv_keep, hd)
        f = _topk_sorted(importance["ffn"][ti], sa["intermediate_size"])
        q_t, kv_t = ta["num_attention_heads"] * hd, t_kv * hd
        per_layer[si] = {"h": hid, "q": q, "kv": kv, "f": f, "qkv": torch.cat([q, q_t + kv, q_t + kv_t + kv]),
                         "ff2": torch.cat([f, t_f + f])}
        heads_kept[si] = q_heads.tolist()
    t_sd = teacher.state_dict()
    new = {}
    for name, s_t in student.state_dict().items():
        rel, si, t_name = name, None, name
        if name.startswith(prefix):
            idx, rel = name[len(prefix):].split(".", 1)
            si = int(idx)
            t_name = f"{prefix}{layers[si]}.{rel}"
        t_t = t_sd.get(t_name)
        if t_t is None:
            return {"method": "random", "why": f"the student cannot start from the teacher: it has no {t_name}"}
        spaces = _spaces(rel, t_t.dim(), spec) if si is not None else None
        if spaces is None:  # the hidden axis where widths differ, else whole
            spaces = tuple(None if t == s else ("h" if (t, s) == (t_h, sa["hidden_size"]) else "?")
                           for t, s in zip(t_t.shape, s_t.shape))
        val = t_t
        index = per_layer.get(si, {"h": hid})
        for axis, space in enumerate(spaces):
            if space is not None and space in index:
                val = val.index_select(axis, index[space])
        if val.shape != s_t.shape:
            return {"method": "random", "why": f"the student cannot start from the teacher: {name} is "
                                               f"{tuple(s_t.shape)}, the teacher's {tuple(t_t.shape)}"}
        new[name] = val
    for name, p in student.state_dict().items():
        p.copy_(new[name])
    return {"method": "teacher", "layers": layers, "width": "same" if same_width else "pruned",
            "hidden_kept": int(sa["hidden_size"]), "heads_kept": heads_kept,
            "ffn_kept": {si: int(sa["intermediate_size"]) for si in per_layer}}


def build_student(teacher, student_config=None, calibration: Optional[Iterable[dict]] = None,
                  init: str = "teacher", seed: int = 0):
    """(student, init_info): the student model of the teacher's class, initialised from the teacher.

    Where it cannot start from the teacher, init_info says why ({"method": "random", "why": ...}) and
    one line on the console says so."""
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification

    cfg = student_config if student_config is not None else student_config_from(None, teacher.config)
    if getattr(cfg, "vocab_size", None) != getattr(teacher.config, "vocab_size", None):
        raise EdgekdError(f"student vocab_size {getattr(cfg, 'vocab_size', None)} differs from the teacher's "
                          f"{teacher.config.vocab_size}: the student must use the teacher's tokenizer")
    if init not in ("teacher", "random"):
        raise EdgekdError(f"unknown student init {init!r}: use 'teacher' or 'random'")
    torch.manual_seed(seed)
    if cfg.model_type == teacher.config.model_type:
        student = type(teacher)(cfg)
    else:  # another family's, or edgekd's BiLSTM (registered with the Auto classes where its config was made)
        classification = "ForSequenceClassification" in type(teacher).__name__
        auto = AutoModelForImageClassification if is_image_classifier(cfg) else \
            AutoModelForSequenceClassification if classification else AutoModelForCausalLM
        student = auto.from_config(cfg)
    info = {"method": "random"}
    if init == "teacher" and hasattr(student, "init_from_teacher"):  # a student of its own kind (the BiLSTM)
        info = student.init_from_teacher(teacher)
    elif init == "teacher" and is_image_classifier(cfg):  # its kept blocks, the strongest channels of each width
        if type(student) is type(teacher):
            imp = measure_channel_importance(teacher, calibration) if calibration is not None else None
            info = init_from_image_teacher(student, teacher, imp)
        else:
            info = {"method": "random", "why": f"the student ({type(student).__name__}) is not of the teacher's family"}
    elif init == "teacher" and seq2seq.is_seq2seq(cfg):
        info = seq2seq.init_from_teacher(student, teacher)
    elif init == "teacher":
        imp = None
        ta, sa = arch_of(teacher.config), arch_of(cfg)
        narrower = any(ta[k] != sa[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads"))
        if calibration is not None and narrower and prune_spec(teacher) is not None and layer_stack(teacher) \
                and type(student) is type(teacher) and narrowing_problem(ta, sa) is None:
            imp = measure_importance(teacher, calibration)
        info = init_from_teacher(student, teacher, imp)
    if init == "teacher" and info["method"] != "teacher":
        from edgekd.console import note

        note(f"edgekd: note: {info['why']}; it starts from random weights")
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
    """Parameters of a built module (the one count of a module; `arch.param_count` counts a config)."""
    return sum(p.numel() for p in model.parameters())


def size_mb(model) -> float:
    """Its weights' bytes in memory, in MB."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
