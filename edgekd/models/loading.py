"""Loading teachers (and students) from local Hugging Face directories, with one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.models.builtin import BUILTIN_TEACHERS


def resolve_model_dir(path: str | os.PathLike) -> Path:
    if str(path) in BUILTIN_TEACHERS:
        from edgekd.models.builtin import builtin_teacher_dir

        return builtin_teacher_dir(str(path))
    return Path(path)


# Size fields of a model config and the range a real model's value lies in: checked before anything is
# allocated, so `num_hidden_layers: 1000000` is one line, not minutes of allocation. (BERT/Llama names,
# DistilBERT's, and the encoder-decoder's.)
SIZE_RANGES = {
    "num_hidden_layers": (1, 1024), "n_layers": (1, 1024), "encoder_layers": (1, 1024), "decoder_layers": (1, 1024),
    "hidden_size": (1, 1 << 16), "dim": (1, 1 << 16), "d_model": (1, 1 << 16),
    "num_attention_heads": (1, 1024), "n_heads": (1, 1024), "encoder_attention_heads": (1, 1024),
    "decoder_attention_heads": (1, 1024), "num_key_value_heads": (1, 1024), "head_dim": (1, 4096),
    "intermediate_size": (1, 1 << 20), "hidden_dim": (1, 1 << 20), "encoder_ffn_dim": (1, 1 << 20),
    "decoder_ffn_dim": (1, 1 << 20), "vocab_size": (2, 1 << 22), "max_position_embeddings": (2, 1 << 25),
    "num_labels": (2, 1 << 20),
}


def check_model_config(cfg: dict, where, what: str = "model") -> None:
    """The sizes in a model's config are whole numbers in SIZE_RANGES, widths divide into heads, and no
    remote code is asked for: one line in edgekd's words naming the `what` (teacher, student) and the file."""
    fix = "fix config.json or re-save the model with save_pretrained"
    if cfg.get("auto_map"):
        raise EdgekdError(f"the {what} {where} asks for its own Python code (config.json's auto_map), which edgekd "
                          f"never runs: use a model of a family transformers provides")
    for key, (low, high) in SIZE_RANGES.items():
        v = cfg.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise EdgekdError(f"the {what}'s config {where}: {key} is {v!r}, not a whole number: {fix}")
        if not low <= v <= high:
            raise EdgekdError(f"the {what}'s config {where}: {key} is {v}, outside {low}..{high}: {fix}")
    for width, heads in (("hidden_size", "num_attention_heads"), ("dim", "n_heads"), ("d_model", "encoder_attention_heads"),
                         ("d_model", "decoder_attention_heads")):
        w, h = cfg.get(width), cfg.get(heads)
        if w and h and not cfg.get("head_dim") and w % h:
            raise EdgekdError(f"the {what}'s config {where}: {width} {w} is not a multiple of {heads} {h}: {fix}")
    h, kv = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    if h and kv and h % kv:
        raise EdgekdError(f"the {what}'s config {where}: num_attention_heads {h} is not a multiple of "
                          f"num_key_value_heads {kv}: {fix}")


def read_config_dict(d: Path, what: str = "model") -> dict:
    cfg_path = d / "config.json"
    if not d.exists():
        raise EdgekdError(f"model directory {d} does not exist: pass a local Hugging Face model directory or 'builtin'")
    if not d.is_dir():
        raise EdgekdError(f"{d} is not a directory: pass a local Hugging Face model directory or 'builtin'")
    if not cfg_path.is_file():
        raise EdgekdError(f"{d} has no config.json: save the model there with model.save_pretrained")
    from edgekd.limits import read_bytes

    try:
        cfg = json.loads(read_bytes(cfg_path, f"the {what}'s config"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgekdError(f"{cfg_path} is corrupt ({type(e).__name__}): re-save the model with save_pretrained") from e
    if isinstance(cfg, dict) and "model_type" not in cfg and "architecture" in cfg:
        from edgekd.models.vision import TIMM_HINT

        raise EdgekdError(f"{d} is a timm checkpoint: {TIMM_HINT}")
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise EdgekdError(f"{cfg_path} has no model_type: re-save the model with save_pretrained")
    check_model_config(cfg, cfg_path, what)
    return cfg


def model_digest(d: Path) -> str:
    """sha256 of a model folder's config.json and weight files (streamed, bounded memory): its identity."""
    import hashlib

    from edgekd.limits import file_digest

    h = hashlib.sha256()
    for f in sorted([d / "config.json", *d.glob("*.safetensors"), *d.glob("pytorch_model*.bin")]):
        if f.is_file():
            h.update(f.name.encode() + b"\0")
            file_digest(f, h)
    return h.hexdigest()


def _check_weights(d: Path) -> None:
    """Open every safetensors header now, so a corrupt file is a clear error, not a deep traceback."""
    st = sorted(d.glob("*.safetensors"))
    if not st and not list(d.glob("pytorch_model*.bin")):
        raise EdgekdError(f"{d} has no model weights (model.safetensors): save the model there with save_pretrained")
    from safetensors import safe_open

    for f in st:
        try:
            with safe_open(str(f), framework="pt") as h:
                for k in list(h.keys())[:1]:
                    h.get_slice(k)
        except Exception as e:
            raise EdgekdError(f"{f} is not a readable safetensors file ({type(e).__name__}): re-save the model or re-download it") from e


# The kinds of model edgekd distils and exports: one name each, used everywhere (report.json's "kind").
CAUSAL_LM = "causal-lm"
CLASSIFIER = "classifier"
SEQ2SEQ = "seq2seq"  # an encoder-decoder (translation) model: edgekd.models.seq2seq


def is_classifier(cfg: dict) -> bool:
    """A sequence classifier or an image classifier (models/vision.py): one kind, CLASSIFIER."""
    return any(a.endswith(("ForSequenceClassification", "ForImageClassification")) for a in (cfg.get("architectures") or []))


def model_kind(cfg: dict) -> str:
    """CLASSIFIER for a *ForSequenceClassification config, SEQ2SEQ for an encoder-decoder, else CAUSAL_LM."""
    from edgekd.models.seq2seq import is_seq2seq

    if is_classifier(cfg):
        return CLASSIFIER
    return SEQ2SEQ if is_seq2seq(cfg) else CAUSAL_LM


def check_kind(d: Path, cfg: dict) -> None:
    """edgekd distils and exports causal LMs and sequence classifiers; a classifier of a family it does not
    read (RoBERTa, ...) or another head (*ForMaskedLM, *ForTokenClassification) is one line naming what is."""
    from edgekd.models.arch import BILSTM_MODEL_TYPE, CLASSIFIER_FAMILIES, check_supported

    check_supported(cfg)  # an encoder-decoder teacher: the message that says so
    from edgekd.models.vision import check_image_family, is_image_classifier

    archs, mt = cfg.get("architectures") or [], cfg.get("model_type")
    if is_image_classifier(cfg):
        check_image_family(d, cfg)
    elif is_classifier(cfg):
        if mt not in CLASSIFIER_FAMILIES and mt != BILSTM_MODEL_TYPE:
            raise EdgekdError(f"{d}: {archs[0]} ({mt}) is not a classifier edgekd can distil: use a "
                              f"*ForSequenceClassification model of {', '.join(CLASSIFIER_FAMILIES)} (BERT, DistilBERT, ...)")
        if mt == BILSTM_MODEL_TYPE:
            import edgekd.models.bilstm  # noqa: F401  registers it with transformers' Auto classes
    elif model_kind(cfg) == SEQ2SEQ:
        if archs and not any(a.endswith(("MTModel", "ForConditionalGeneration")) for a in archs):
            raise EdgekdError(f"{d}: architecture {archs[0]} is not a {mt} translation model: edgekd distils "
                              f"MarianMTModel and BartForConditionalGeneration encoder-decoders")
    elif archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise EdgekdError(f"{d}: architecture {archs[0]} is neither a causal LM nor a sequence classifier: edgekd "
                          f"distils and exports *ForCausalLM models and *ForSequenceClassification models of "
                          f"{', '.join(CLASSIFIER_FAMILIES)}")


def load_model(path: str | os.PathLike, *, with_tokenizer: bool = True, what: str = "teacher"):
    """(model, input reader or None, kind) where kind is CAUSAL_LM, CLASSIFIER or SEQ2SEQ; model in eval mode,
    float32. The input reader is the tokenizer, or an image classifier's `models.vision.ImageInput`."""
    import torch
    from transformers import (AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSeq2SeqLM,
                              AutoModelForSequenceClassification)

    from transformers.utils import logging as hf_logging

    from edgekd.models.arch import check_supported
    from edgekd.models.vision import image_input, is_image_classifier

    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar stays off the console
    d = resolve_model_dir(path)
    cfg = read_config_dict(d, what)
    check_supported(cfg)  # before the weights: an unsupported family is one line, not a load report
    check_kind(d, cfg)
    _check_weights(d)
    kind, image = model_kind(cfg), is_image_classifier(cfg)
    reader = image_input(d, cfg) if image else None  # before the weights: a missing processor is one line
    cls = AutoModelForImageClassification if image else \
        {CLASSIFIER: AutoModelForSequenceClassification, SEQ2SEQ: AutoModelForSeq2SeqLM}.get(kind, AutoModelForCausalLM)
    try:
        model = cls.from_pretrained(str(d), local_files_only=True, dtype=torch.float32)
    except EdgekdError:
        raise
    except Exception as e:
        raise load_failure(e, d, what) from e
    model.eval()
    tok = reader
    if with_tokenizer and not image:
        from edgekd.data.tokenizer import load_tokenizer

        tok = load_tokenizer(d)
    return model, tok, kind


def load_failure(e: Exception, d: Path, what: str) -> EdgekdError:
    """transformers' refusal to build a model from `d`, summarised in edgekd's words (its own text runs to
    several lines and reports; none of it is cut into the line)."""
    import re

    text = str(e)
    fix = "fix config.json or re-save the model with save_pretrained"
    if "size mismatch" in text or "ignore_mismatched_sizes" in text:
        return EdgekdError(f"the {what}'s weights in {d} do not fit its config.json (a tensor's shape differs, e.g. "
                           f"vocab_size or a width was edited): restore config.json or re-save the model")
    m = re.search(r"validator '(\w+)'", text)
    if m or "validation error" in text.lower():
        check = f" (transformers' check {m.group(1)})" if m else ""
        return EdgekdError(f"the {what}'s config.json in {d} is inconsistent{check}: sizes, heads or rope settings do "
                           f"not fit together: {fix}")
    return EdgekdError(f"cannot load the {what} from {d} (transformers raised {type(e).__name__}): check that "
                       f"config.json and the weights belong together, or {fix}")


def register_auto(model_type: str, config_class, model_class, auto: str) -> None:
    """Make transformers' AutoConfig and the Auto class named `auto` (AutoModelForSequenceClassification, ...)
    know one of edgekd's own models (idempotent): its `save_pretrained` directories then load like any other."""
    import transformers

    try:
        transformers.AutoConfig.register(model_type, config_class)
        getattr(transformers, auto).register(config_class, model_class)
    except ValueError:  # already registered
        pass


def load_teacher(path: str | os.PathLike):
    return load_model(path, what="teacher")


def read_model_config(path: str | os.PathLike) -> dict:
    """The config dict of a model directory ('builtin' included) or of a config.json file: what a cost
    model needs, without loading any weights."""
    p = resolve_model_dir(path)
    if p.is_dir() or not p.exists():
        return read_config_dict(p)
    from edgekd.checks import parse_json_object, text_file

    cfg = parse_json_object(text_file(p, "config file"), str(p), "pass a model's config.json or its directory")
    if "model_type" not in cfg:
        raise EdgekdError(f"{p} has no model_type: pass a model's config.json (save_pretrained writes one)")
    return cfg
