"""A --student spec read (`student_overrides`: the one reader, so the CLI and the API agree) and its shape
checked against the teacher's config (`student_shape`), before any model is built. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Union

from edgekd.checks import json_object, number
from edgekd.errors import EdgekdError
from edgekd.models.arch import BILSTM_MODEL_TYPE, CNN_MODEL_TYPE, STUDENT_NAMES

# The fields of a student's shape that must be positive integers (models/arch.ARCH_KEYS is what arch_of reads).

SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "head_dim")


def student_overrides(spec: Any) -> Optional[dict]:
    """The config fields a --student names (a dict, a JSON file, a model folder, or the name of a student edgekd
    provides: 'bilstm'), or None for the default."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        d = dict(spec)
    elif str(spec) in STUDENT_NAMES:  # a student edgekd provides (bilstm), sized from the teacher
        return {"model_type": STUDENT_NAMES[str(spec)]}
    else:
        p = Path(spec)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise EdgekdError(f"--student {spec} does not exist: pass {', '.join(STUDENT_NAMES)} (a student edgekd "
                              f"provides), a JSON file of config fields or a model folder")
        d = json_object(p, "student config", "give a JSON object of config fields")
    if d.get("model_type") in STUDENT_NAMES:  # {"model_type": "bilstm", "hidden_size": 64}
        d["model_type"] = STUDENT_NAMES[d["model_type"]]
    return d


def _student_fits_kind(model_type: Optional[str], teacher: Optional[dict]) -> None:
    """edgekd's CNN is an image classifier's student and its BiLSTM a sentence classifier's: one line otherwise."""
    if not teacher or model_type not in (BILSTM_MODEL_TYPE, CNN_MODEL_TYPE):
        return
    archs = teacher.get("architectures") or []
    image = any(str(a).endswith("ForImageClassification") for a in archs)
    if model_type == CNN_MODEL_TYPE and not image:
        raise EdgekdError(f"--student cnn is an image classifier: the teacher ({archs[0] if archs else teacher.get('model_type')}) "
                          f"must be a *ForImageClassification model; a sentence classifier takes --student bilstm")
    if model_type == BILSTM_MODEL_TYPE and image:
        raise EdgekdError(f"--student bilstm is a sentence classifier: an image teacher ({archs[0]}) takes --student cnn "
                          f"or its own family's student")


def student_shape(overrides: Optional[dict], teacher: Optional[dict],
                  own_vocab: Union[bool, Callable[[], bool]] = False) -> None:
    """Layers, widths and heads of the student (its fields over the teacher's) are positive and fit together;
    its vocabulary is the teacher's unless `own_vocab` (a cross-tokenizer loss; a callable is asked only when
    the vocabularies differ, so the CLI's early check imports the losses only then)."""
    if not overrides:
        return
    _student_fits_kind(overrides.get("model_type"), teacher)
    same_family = not overrides.get("model_type") or not teacher or overrides["model_type"] == teacher.get("model_type")
    c = {**(teacher or {}), **overrides} if same_family else dict(overrides)
    for k in SHAPE_KEYS:
        if k in overrides and overrides[k] is not None:
            number(f"student {k}", overrides[k], low=1, integer=True)
    hidden, heads, kv = c.get("hidden_size"), c.get("num_attention_heads"), c.get("num_key_value_heads")
    t = teacher or {}
    own_head_dim = "head_dim" in overrides or (  # Gemma-style: head_dim is its own number, not hidden / heads
        bool(t.get("head_dim")) and t.get("head_dim") * (t.get("num_attention_heads") or 0) != t.get("hidden_size"))
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and not own_head_dim and hidden % heads:
        raise EdgekdError(f"student hidden_size {hidden} is not a multiple of num_attention_heads {heads}: "
                          f"fix the student config")
    if isinstance(heads, int) and isinstance(kv, int) and kv > 0 and heads % kv:
        raise EdgekdError(f"student num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}: "
                          f"fix the student config")
    t_vocab, s_vocab = (teacher or {}).get("vocab_size"), c.get("vocab_size")
    if t_vocab is not None and s_vocab is not None and s_vocab != t_vocab and not (
            own_vocab() if callable(own_vocab) else own_vocab):
        raise EdgekdError(f"student vocab_size {s_vocab} differs from the teacher's {t_vocab}: the student must "
                          f"use the teacher's tokenizer, or distil across tokenizers with --loss uld or "
                          f"--loss token_align")
