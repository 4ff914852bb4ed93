"""One reading of a model config for every supported family, and one way to write a smaller one.

Families name the same numbers differently (GPT-2: n_embd, n_layer, n_head, n_inner; OPT: ffn_dim;
DistilBERT: dim, hidden_dim, n_layers, n_heads). `arch_of` reads any of them (an HF config object,
its dict, or an earlier `arch_of` result) into the canonical Llama-style names; `with_arch` writes
canonical overrides back into the family's own fields and shrinks every per-layer list
(`layer_types`, ...) with the layers, keeping the same every-k-th layers the student copies from
the teacher (`select_layers`). Every path that builds a smaller config goes through `with_arch`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Optional

from edgekd.errors import EdgekdError

ARCH_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim")

# canonical name -> the family's own field, where it differs
NATIVE: dict[str, dict[str, str]] = {
    "gpt2": {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
             "intermediate_size": "n_inner", "max_position_embeddings": "n_positions"},
    "opt": {"intermediate_size": "ffn_dim"},
    "distilbert": {"hidden_size": "dim", "intermediate_size": "hidden_dim", "num_hidden_layers": "n_layers",
                   "num_attention_heads": "n_heads"},
}
# Families whose attention has one key/value head per query head (no num_key_value_heads field) and
# whose head size is always hidden_size / heads (no head_dim field).
MHA_ONLY = {"gpt2", "opt", "bert", "distilbert"}
# Plain two-matrix MLP (up, down) instead of the gated three (gate, up, down).
UNGATED_MLP = {"gpt2", "opt", "bert", "distilbert"}
LEARNED_POSITIONS = {"gpt2", "opt", "bert", "distilbert"}
# Tied input and output embeddings unless the config says otherwise.
# Per layer: Gemma 2/3 norm before and after both attention and MLP; Qwen3, Gemma 3 norm q and k per head;
# Qwen2 has biases on q, k and v (not o). Encoders: a pooler (or MLM transform) on top.
FOUR_NORMS = {"gemma2", "gemma3", "gemma3_text"}
QK_NORM = {"qwen3", "gemma3", "gemma3_text"}
QKV_BIAS = {"qwen2"}
ENCODERS = {"bert", "distilbert"}
TIED_BY_DEFAULT = {"gpt2", "opt", "gemma", "gemma2", "gemma3", "gemma3_text", "bert", "distilbert"}
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2", "opt", "bert",
             "distilbert")
# Students edgekd provides beside the teacher's own family, by the name --student gives: their model_type.
BILSTM_MODEL_TYPE = "edgekd_bilstm"
CNN_MODEL_TYPE = "edgekd_cnn"  # edgekd's small image CNN (models/cnn.py): the built-in image teacher and --student cnn
STUDENT_NAMES = {"bilstm": BILSTM_MODEL_TYPE, "cnn": CNN_MODEL_TYPE}
# The *ForImageClassification families edgekd distils (models/vision.py), edgekd's CNN among them.
IMAGE_FAMILIES = ("resnet", "mobilenet_v2", "vit", "convnext", CNN_MODEL_TYPE)
# Families whose *ForSequenceClassification model can teach: the encoders, and the decoder families' classifiers.
CLASSIFIER_FAMILIES = SUPPORTED
ENCODER_DECODER = {"bart", "mbart", "marian", "t5", "mt5", "umt5", "pegasus", "pegasus_x", "blenderbot",
                   "blenderbot-small", "fsmt", "prophetnet", "led", "longt5", "m2m_100", "nllb-moe", "plbart",
                   "switch_transformers", "bigbird_pegasus", "encoder-decoder", "whisper", "seamless_m4t"}
# The encoder-decoder families edgekd distils (edgekd.models.seq2seq: kind `seq2seq`).
SEQ2SEQ_FAMILIES = ("marian", "bart")
# Parameter counts of the families `arch_of` does not read (a dense stack it does): model_type -> count(config),
# registered by the module that builds them (models/bilstm.py, models/seq2seq.py) when it is imported.
PARAM_COUNTS: dict[str, Callable[[Any], int]] = {}


def register_param_count(model_types, count: Callable[[Any], int]) -> None:
    """`count(config)` counts the parameters of the models of these model_types (a config object or its dict)."""
    for mt in model_types:
        PARAM_COUNTS[mt] = count


def is_seq2seq(config: Any) -> bool:
    """Whether a config (an object or its dict) is one of the encoder-decoders edgekd distils."""
    mt = config.get("model_type") if isinstance(config, Mapping) else getattr(config, "model_type", None)
    return mt in SEQ2SEQ_FAMILIES


def select_layers(n_teacher: int, n_student: int) -> list[int]:
    """Every k-th teacher layer, k = n_teacher // n_student, starting at 0 (DistilBERT): the layers a
    student copies from its teacher, and whose entries of per-layer config lists it keeps."""
    if n_student > n_teacher:
        raise EdgekdError(f"the student has {n_student} layers, more than the teacher's {n_teacher}: use fewer layers")
    if n_student < 1:
        raise EdgekdError(f"the student needs at least one layer, got {n_student}")
    k = n_teacher // n_student
    return [i * k for i in range(n_student)]


def _getter(config: Any):
    if isinstance(config, Mapping):
        return lambda k, d=None: config.get(k, d)
    return lambda k, d=None: getattr(config, k, d)


def model_type_of(config: Any) -> str:
    return str(_getter(config)("model_type", "") or "")


def check_supported(config: Any) -> None:
    """A one-line EdgekdError for teachers edgekd cannot distill yet (encoder-decoder models other than
    edgekd.models.seq2seq's families)."""
    get = _getter(config)
    mt = model_type_of(config)
    if (get("is_encoder_decoder") or mt in ENCODER_DECODER) and mt not in SEQ2SEQ_FAMILIES:
        raise EdgekdError(f"encoder-decoder teachers ({mt or 'unknown'}) are not supported yet: edgekd distills "
                          f"{' and '.join(SEQ2SEQ_FAMILIES)} encoder-decoders, decoder-only LMs and encoder "
                          f"classifiers ({', '.join(SUPPORTED)})")


def check_decoder_only(config: Any) -> None:
    """The shape readers below (search, cost models, width pruning) know decoder stacks and encoders, not
    encoder-decoders: one line for those."""
    check_supported(config)
    if is_seq2seq(config):
        raise EdgekdError(f"the student search and the latency models do not cover encoder-decoder models "
                          f"({model_type_of(config)}) yet: distil it without --target")


def _read(config: Any, key: str, default=None):
    """A canonical field: its canonical name first (HF attribute maps, earlier arch_of dicts), then the
    family's own field."""
    get = _getter(config)
    v = get(key)
    if v is None:
        native = NATIVE.get(model_type_of(config), {}).get(key)
        if native is not None:
            v = get(native)
    return default if v is None else v


def arch_of(config: Any) -> dict:
    """The canonical numbers of a config (object, dict or an earlier arch_of result):
    vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
    num_key_value_heads, head_dim, max_position_embeddings, tie_word_embeddings, plus model_type and
    the shape facts that parameter counts depend on (gated_mlp, learned_positions, attention_bias,
    mlp_bias, word_embed_proj_dim: None unless OPT projects, num_labels: 0 for an LM head)."""
    check_decoder_only(config)
    mt = model_type_of(config)
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
               if _read(config, k) is None]
    if missing:
        raise EdgekdError(f"the {mt or 'model'} config has no {', '.join(missing)} (nor the family's own name for "
                          f"it): edgekd supports {', '.join(SUPPORTED)}")
    h, nh = int(_read(config, "hidden_size")), int(_read(config, "num_attention_heads"))
    f = _read(config, "intermediate_size")
    if f is None:
        f = 4 * h  # GPT-2's n_inner=None
    kv = nh if mt in MHA_ONLY else int(_read(config, "num_key_value_heads", nh))
    hd = (None if mt in MHA_ONLY else _read(config, "head_dim")) or h // nh
    tie = _read(config, "tie_word_embeddings")
    get = _getter(config)
    proj = get("word_embed_proj_dim") if mt == "opt" else None
    return {"model_type": mt, "vocab_size": int(_read(config, "vocab_size")), "hidden_size": h,
            "intermediate_size": int(f), "num_hidden_layers": int(_read(config, "num_hidden_layers")),
            "num_attention_heads": nh, "num_key_value_heads": int(kv), "head_dim": int(hd),
            "max_position_embeddings": int(_read(config, "max_position_embeddings", 0) or 0),
            "tie_word_embeddings": bool(mt in TIED_BY_DEFAULT if tie is None else tie),
            "gated_mlp": bool(get("gated_mlp", mt not in UNGATED_MLP)),
            "learned_positions": bool(get("learned_positions", mt in LEARNED_POSITIONS)),
            "attention_bias": bool(get("attention_bias", False)), "mlp_bias": bool(get("mlp_bias", False)),
            "word_embed_proj_dim": proj if proj not in (None, h) else None, "num_labels": _num_labels(config)}


def _num_labels(config: Any) -> int:
    """Classes of a *ForSequenceClassification config (its head replaces the LM head), else 0. An arch_of
    dict carries it as num_labels; a config object always has num_labels, so there only the
    architectures say."""
    get = _getter(config)
    archs = get("architectures")
    if not archs:
        return int(get("num_labels", 0) or 0) if isinstance(config, Mapping) else 0
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        return 0
    return len(get("id2label") or {}) or int(get("num_labels", 0) or 2)


def _layer_params(a: Mapping[str, Any]) -> int:
    """One decoder/encoder layer: attention, MLP, norms and whatever biases the family has."""
    h, f, hd, mt = a["hidden_size"], a["intermediate_size"], a["head_dim"], a["model_type"]
    q, kv = a["num_attention_heads"] * hd, a["num_key_value_heads"] * hd
    n = h * q + 2 * h * kv + q * h + (3 if a["gated_mlp"] else 2) * h * f
    if not a["gated_mlp"]:  # the GPT-2/OPT/BERT families: biases on every linear layer, LayerNorm with a bias
        return n + q + 2 * kv + h + f + h + 4 * h
    n += (4 if mt in FOUR_NORMS else 2) * h + (2 * hd if mt in QK_NORM else 0)
    if a["attention_bias"] or mt in QKV_BIAS:
        n += q + 2 * kv + (h if a["attention_bias"] else 0)  # Qwen2: q/k/v only; attention_bias: o as well
    return n + (2 * f + h if a["mlp_bias"] else 0)


def _outside_layers(a: Mapping[str, Any]) -> int:
    """Embeddings, final norm and the head: the LM head (unless tied) or the classifier's."""
    h, v, mt, labels = a["hidden_size"], a["vocab_size"], a["model_type"], a["num_labels"]
    e = a["word_embed_proj_dim"] or h  # OPT's projected embeddings
    n = v * e + (2 * h * e if e != h else 0)
    if a["learned_positions"]:
        n += (a["max_position_embeddings"] + (2 if mt == "opt" else 0)) * h  # OPT's positions start at 2
    n += (2 if not a["gated_mlp"] else 1) * h  # final norm (BERT's: the embeddings' LayerNorm)
    if mt == "bert":
        n += 2 * h  # token type embeddings
    if mt in ENCODERS:  # BERT's pooler / DistilBERT's pre-classifier; or the MLM transform and vocab bias
        return n + h * h + h + (h * labels + labels if labels else 2 * h + v)
    if labels:
        return n + e * labels
    return n + (0 if a["tie_word_embeddings"] else v * e)


def param_count(config: Any) -> int:
    """Parameters of the model a config describes (an HF config, its dict, or an arch_of result), from
    the config alone: the latency model weighs hundreds of candidates, too many to build. Exact for the
    supported families (tests/models/test_families.py checks it against the built model), edgekd's BiLSTM and
    the encoder-decoders (their modules register their counts: PARAM_COUNTS)."""
    mt = model_type_of(config)
    if mt in PARAM_COUNTS:
        return PARAM_COUNTS[mt](config)
    if mt in IMAGE_FAMILIES:
        from edgekd.models.vision import image_param_count

        return image_param_count(config)
    if mt == BILSTM_MODEL_TYPE or is_seq2seq(config):  # loading or building such a model imports its module
        raise RuntimeError(f"no parameter count is registered for {mt!r}: import edgekd.models.bilstm / "
                           f"edgekd.models.seq2seq (loading or building the model does) before counting it")
    a = arch_of(config)
    return a["num_hidden_layers"] * _layer_params(a) + _outside_layers(a)


def native_overrides(config: Any, overrides: Mapping[str, Any]) -> dict:
    """Canonical overrides in the family's own field names (native names pass through as they are)."""
    mt = model_type_of(config)
    names = NATIVE.get(mt, {})
    out: dict = {}
    for k, v in overrides.items():
        if mt in MHA_ONLY and k in ("num_key_value_heads", "head_dim"):
            continue  # implied: one KV head per query head, head size hidden / heads
        out[names.get(k, k)] = v
    if mt == "opt" and "hidden_size" in overrides and "word_embed_proj_dim" not in overrides:
        get = _getter(config)
        if get("word_embed_proj_dim") in (None, get("hidden_size")):  # no projection in the teacher: none here
            out["word_embed_proj_dim"] = overrides["hidden_size"]
    return out


def _per_layer(key: str, value: Any, n: int) -> bool:
    """A list with one entry per layer (layer_types, mlp_layer_types, no_rope_layers, ...)."""
    return isinstance(value, (list, tuple)) and len(value) == n and "layer" in key and \
        all(isinstance(x, (str, int, float, bool)) or x is None for x in value)


def _layer_index_list(key: str, value: Any, n: int) -> bool:
    """A list of layer indices (mlp_only_layers, moe_layers, ...), shorter than the layer count."""
    return isinstance(value, (list, tuple)) and "layer" in key and len(value) != n and \
        all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < n for x in value)


def shrink_layer_lists(d: dict, n_teacher: int, n_student: int) -> dict:
    """Per-layer lists of a config dict cut to the student's layers: the every-k-th teacher layers
    the student keeps (`select_layers`), so each student layer keeps its teacher layer's type; lists of
    layer indices keep the kept layers, renumbered."""
    if n_teacher == n_student:
        return d
    keep = select_layers(n_teacher, n_student)
    where = {t: s for s, t in enumerate(keep)}
    for k, v in list(d.items()):
        if _per_layer(k, v, n_teacher):
            d[k] = type(v)(v[i] for i in keep)
        elif _layer_index_list(k, v, n_teacher):
            d[k] = type(v)(where[i] for i in v if i in where)
    return d


def with_arch(config: Any, overrides: Mapping[str, Any]) -> Any:
    """`config` (an HF config object or a dict) with `overrides` (canonical or the family's own names)
    applied and per-layer lists shrunk with the layers; the same kind of object back."""
    native = native_overrides(config, overrides)
    n_teacher = int(_read(config, "num_hidden_layers"))
    layers_key = NATIVE.get(model_type_of(config), {}).get("num_hidden_layers", "num_hidden_layers")
    n_student = int(native.get(layers_key, n_teacher))
    if isinstance(config, Mapping):
        d = {**copy.deepcopy(dict(config)), **native}
        return shrink_layer_lists(d, n_teacher, n_student)
    cfg = copy.deepcopy(config)
    for k, v in native.items():
        setattr(cfg, k, v)
    lists = shrink_layer_lists({k: getattr(cfg, k) for k in cfg.to_dict() if hasattr(cfg, k)}, n_teacher, n_student)
    for k, v in lists.items():
        if v is not getattr(cfg, k):
            setattr(cfg, k, v)
    return cfg


def config_from(config: Any, overrides: Mapping[str, Any], drop: tuple = (), what: str = ""):
    """A new, validated config object of the same class: `with_arch` on its dict (less the `drop` keys,
    which the class then derives again), then the class's own checks; an invalid combination is an
    EdgekdError naming the overrides."""
    d = {k: v for k, v in config.to_dict().items() if k not in drop}
    d = with_arch(d, overrides)
    try:
        return type(config)(**d)
    except (TypeError, ValueError) as e:
        raise EdgekdError(f"{what}the overrides {dict(overrides)} give an invalid {type(config).__name__} "
                          f"({str(e).splitlines()[0][:200]})") from e


def narrowing_problem(teacher: Mapping[str, Any], student: Mapping[str, Any]) -> Optional[str]:
    """Why the student (an arch_of dict, or a config dict of the teacher's family) cannot start from the
    teacher's weights (layers, heads, key/value groups and widths no larger than the teacher's, the same
    head size), or None when it can."""
    ta, sa = arch_of(teacher), arch_of(student)
    if sa["num_hidden_layers"] > ta["num_hidden_layers"]:
        return "the student has more layers than the teacher"
    if sa["head_dim"] != ta["head_dim"]:
        return f"its head size ({sa['head_dim']}) differs from the teacher's ({ta['head_dim']})"
    t_group = ta["num_attention_heads"] // ta["num_key_value_heads"]
    s_group = sa["num_attention_heads"] // sa["num_key_value_heads"]
    if sa["num_key_value_heads"] > ta["num_key_value_heads"] or s_group > t_group or \
            any(sa[k] > ta[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads")):
        return "it is not a narrowing of the teacher (a width, head or query-group count is larger)"
    return None
