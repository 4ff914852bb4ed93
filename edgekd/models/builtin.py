"""The built-in teacher: a small Llama trained by edgekd on the stdlib corpus from a fixed recipe.

The package ships the result in edgekd/models/builtin_teacher/; `edgekd teacher train`
(edgekd.distill.teacher) reproduces it from RECIPE.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import EdgekdError

BUILTIN_DIR = Path(__file__).parent / "builtin_teacher"

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


def make_readable(d: Path) -> None:
    """Temporary files are created private; a shipped model must be readable by everyone."""
    d.chmod(0o755)
    for f in d.iterdir():
        f.chmod(0o644)


def builtin_teacher_dir() -> Path:
    """The shipped teacher; EdgekdError when the package lacks it (e.g. a source checkout without it)."""
    if not (BUILTIN_DIR / "model.safetensors").is_file():
        raise EdgekdError(f"the built-in teacher is missing from {BUILTIN_DIR}: run `edgekd teacher train --out {BUILTIN_DIR}`")
    return BUILTIN_DIR
