"""The built-in teacher: a small Llama trained by edgekd on the stdlib corpus from a fixed recipe.

The package ships the result in edgekd/models/builtin_teacher/; `edgekd teacher train`
(edgekd.distill.teacher) reproduces it from RECIPE.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import EdgekdError

BUILTIN_DIR = Path(__file__).parent / "builtin_teacher"
SEQ2SEQ_DIR = Path(__file__).parent / "builtin_seq2seq"  # English -> German Marian, SEQ2SEQ_RECIPE
IMAGE_DIR = Path(__file__).parent / "builtin_cnn"  # edgekd's CNN on the 8x8 digits, IMAGE_RECIPE
# The --teacher names of the shipped teachers, and the folder and `edgekd teacher train` option of each.
BUILTIN_TEACHERS = {"builtin": (BUILTIN_DIR, ""), "builtin-seq2seq": (SEQ2SEQ_DIR, " --seq2seq"),
                    "builtin-cnn": (IMAGE_DIR, " --image")}
# The --data names of the shipped data: the stdlib text, and scikit-learn's 8x8 digits (data/images.py).
BUILTIN_DATA = ("builtin", "builtin-digits")

RECIPE = {
    "config": {
        "vocab_size": 4096, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 688, "max_position_embeddings": 256,
        "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    },
    "seed": 1234,
    "steps": 1500,
    "decay_fraction": 0.2,         # warmup-stable-decay: constant lr, then linear decay over the last 20%
    "seq_len": 256,
    "batch_size": 8,
    "lr": 2e-3,
    "min_lr_ratio": 0.1,
    "warmup_steps": 100,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "threads": 2,
    "dtype": "float32",
    "eval_blocks": 64,
    "eval_every": 200,
}

# The built-in seq2seq teacher: a small Marian (English -> German) trained on the shipped gettext corpus
# (edgekd/data/gettext_en_de/) with a BPE shared by both languages (`edgekd teacher train --seq2seq`).
SEQ2SEQ_RECIPE = {
    "config": {"d_model": 192, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
               "decoder_attention_heads": 4, "encoder_ffn_dim": 768, "decoder_ffn_dim": 768,
               "max_position_embeddings": 64, "dropout": 0.1, "scale_embedding": True,
               "share_encoder_decoder_embeddings": True, "tie_word_embeddings": True},
    "vocab_size": 3000,
    "seed": 1234,
    "steps": 250,
    "decay_fraction": 0.2,
    "max_len": 48,
    "batch_size": 32,
    "lr": 1.5e-3,
    "min_lr_ratio": 0.1,
    "warmup_steps": 60,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "threads": 2,
    "eval_pairs": 256,
    "eval_every": 100,
}


# The built-in image teacher: edgekd's CNN (models/cnn.py) trained on scikit-learn's 8x8 digits
# (`edgekd teacher train --image`), the held-out split and augmentation of data/images.py.
IMAGE_RECIPE = {
    "config": {"num_channels": 1, "image_size": 8, "hidden_sizes": [16, 32, 64], "classifier_dropout": 0.1},
    "processor": {"mean": [0.5], "std": [0.5]},
    "seed": 1234,
    "steps": 600,
    "batch_size": 32,
    "lr": 3e-3,
    "min_lr_ratio": 0.1,
    "warmup_steps": 30,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "threads": 2,
    "eval_every": 100,
}


def make_readable(d: Path) -> None:
    """Temporary files are created private; a shipped model must be readable by everyone."""
    d.chmod(0o755)
    for f in d.iterdir():
        f.chmod(0o644)


def builtin_teacher_dir(name: str = "builtin") -> Path:
    """The shipped teacher ('builtin'; 'builtin-seq2seq': the English -> German Marian; 'builtin-cnn': the digits
    CNN); EdgekdError when the package lacks it (e.g. a source checkout without it)."""
    d, option = BUILTIN_TEACHERS[name]
    if not (d / "model.safetensors").is_file():
        what = "teacher" if name == "builtin" else f"{name.split('-', 1)[1]} teacher"
        raise EdgekdError(f"the built-in {what} is missing from {d}: run `edgekd teacher train{option} --out {d}`")
    return d


DEMO_BUDGETS = Path(__file__).parent / "builtin_teacher_budgets.json"


def is_builtin_teacher(teacher) -> bool:
    """Whether a --teacher value is the built-in causal-LM teacher (by name or by its directory)."""
    return teacher == "builtin" or (teacher is not None and Path(str(teacher)).resolve() == BUILTIN_DIR.resolve())


def demo_budget(cost_model: str, target: str) -> dict | None:
    """The built-in teacher's demo budget on `target` for a cost model (builtin_teacher_budgets.json), or
    None where it states none: a device's own budget is made for real models, far beyond this teacher."""
    import json

    return json.loads(DEMO_BUDGETS.read_text()).get(cost_model, {}).get(target)
