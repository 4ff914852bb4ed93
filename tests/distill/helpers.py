"""Small, fast fixtures shared by the engine's tests: a few stdlib texts and a tiny trained teacher."""

from __future__ import annotations

from pathlib import Path

from edgekd.data.corpus import builtin_files


def small_texts(n: int = 10) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for _, p in builtin_files()[:n]]


def write_text_dir(d: Path, n: int = 10) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(small_texts(n)):
        (d / f"doc{i:02d}.txt").write_text(t)
    return d


def tiny_teacher(d: Path, **kw) -> Path:
    from edgekd.distill.teacher import make_tiny_teacher

    kw.setdefault("train_steps", 20)
    return make_tiny_teacher(d, small_texts(), **kw)
