"""Text sources: the built-in stdlib corpus and user data, as lists of (text, label) records.

The built-in corpus is the Python source of the running interpreter's standard library: it is
present wherever edgekd runs, so the default job needs no download.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from edgekd.errors import EdgekdError

_EXCLUDED_DIRS = {"test", "tests", "site-packages", "dist-packages", "__pycache__", "idlelib",
                  "lib2to3", "turtledemo"}
VALIDATION_PERCENT = 5


@dataclass
class Corpus:
    """Train and validation texts; `labels` are set only for classification data."""

    train: list[str]
    validation: list[str]
    train_labels: Optional[list[int]] = None
    validation_labels: Optional[list[int]] = None
    source: str = "builtin"
    digest: str = ""
    label_names: list[str] = field(default_factory=list)

    @property
    def is_classification(self) -> bool:
        return self.train_labels is not None


def _is_validation(key: str) -> bool:
    """Split by a hash of the file's name, so the split never depends on listing order or machine."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")
    return h % 100 < VALIDATION_PERCENT


def builtin_files() -> list[tuple[str, Path]]:
    """(relative name, path) of the stdlib's .py files, sorted by relative name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise EdgekdError(f"the standard library directory {root} is missing: pass --data PATH instead")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS and not d.startswith("."))
        for name in filenames:
            if name.endswith(".py") and not name.startswith("test_"):
                p = Path(dirpath) / name
                out.append((p.relative_to(root).as_posix(), p))
    out.sort(key=lambda t: t[0])
    return out


def load_builtin() -> Corpus:
    files = builtin_files()
    if not files:
        raise EdgekdError("the built-in corpus is empty (no .py files in the standard library): pass --data PATH")
    train, val = [], []
    h = hashlib.sha256()
    for rel, path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if not text.strip():
            continue
        h.update(rel.encode() + b"\0" + hashlib.sha256(text.encode()).digest())
        (val if _is_validation(rel) else train).append(text)
    if not train or not val:
        raise EdgekdError("the built-in corpus has no train or validation files: pass --data PATH")
    return Corpus(train, val, source="builtin", digest=h.hexdigest())


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EdgekdError(f"{path} is not UTF-8 text ({e.reason}): convert it to UTF-8") from e
    except OSError as e:
        raise EdgekdError(f"cannot read {path}: {e.strerror}") from e


def _read_jsonl(path: Path) -> list[tuple[str, object]]:
    rows = []
    for n, line in enumerate(_read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EdgekdError(f"{path}:{n} is not valid JSON ({e.msg}): each line must be an object with a 'text' key") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise EdgekdError(f"{path}:{n} has no string 'text' field: each line must be an object with a 'text' key")
        rows.append((obj["text"], obj.get("label")))
    return rows


def _read_saved_dataset(path: Path) -> list[tuple[str, object]]:
    try:
        import datasets
    except ImportError as e:
        raise EdgekdError(f"{path} looks like a saved data set but the 'datasets' package is missing: pip install datasets") from e
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many types for corrupt dirs
        raise EdgekdError(f"cannot load the data set saved at {path} ({type(e).__name__}): re-save it with datasets.save_to_disk") from e
    if isinstance(ds, datasets.DatasetDict):
        parts = [(k, ds[k]) for k in ds]
    else:
        parts = [("train", ds)]
    rows = []
    for split, d in parts:
        if "text" not in d.column_names:
            raise EdgekdError(f"the data set at {path} (split {split}) has no 'text' column: rename its text column to 'text'")
        labels = d["label"] if "label" in d.column_names else [None] * len(d)
        rows.extend((t, l, split) for t, l in zip(d["text"], labels))
    return rows


def load_user(path: str | os.PathLike) -> Corpus:
    """A text file, a directory of .txt/.jsonl files, a JSONL file, or a datasets.save_to_disk dir."""
    p = Path(path)
    if not p.exists():
        raise EdgekdError(f"data path {p} does not exist: pass a text file, a directory of .txt files, a .jsonl file, or a saved data set")
    records: list[tuple[str, object, Optional[str]]] = []  # (text, label, split or None)
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()
                       or (p / "state.json").exists()):
        records = _read_saved_dataset(p)
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".txt", ".jsonl", ".md", ".py"))
        if not files:
            raise EdgekdError(f"data directory {p} holds no .txt or .jsonl files: add some or pass another path")
        for f in files:
            rel = f.relative_to(p).as_posix()
            if f.suffix == ".jsonl":
                records.extend((t, l, None) for t, l in _read_jsonl(f))
            else:
                records.append((_read_text_file(f), None, "validation" if _is_validation(rel) else "train"))
    elif p.suffix == ".jsonl":
        records = [(t, l, None) for t, l in _read_jsonl(p)]
    else:
        text = _read_text_file(p)
        # One text file: paragraphs are the documents.
        records = [(para, None, None) for para in text.split("\n\n")]
    records = [r for r in records if r[0] and r[0].strip()]
    if not records:
        raise EdgekdError(f"data at {p} is empty (no non-blank text): add text or pass another path")

    labelled = [r for r in records if r[1] is not None]
    if labelled and len(labelled) != len(records):
        raise EdgekdError(f"data at {p} labels only {len(labelled)} of {len(records)} records: label all or none")
    h = hashlib.sha256()
    train, val, tl, vl = [], [], [], []
    label_names: list[str] = []
    label_index: dict = {}
    if labelled:
        for _, l, _ in records:
            if l not in label_index:
                label_index[l] = None
        try:
            keys = sorted(label_index)
        except TypeError:
            keys = sorted(label_index, key=str)
        label_index = {k: i for i, k in enumerate(keys)}
        label_names = [str(k) for k in keys]
    for i, (text, label, split) in enumerate(records):
        h.update(hashlib.sha256(text.encode()).digest() + str(label).encode())
        if split in ("validation", "valid", "val", "test"):
            is_val = True
        elif split == "train":
            is_val = False
        else:
            is_val = _is_validation(f"{i}:{text[:200]}")
        (val if is_val else train).append(text)
        if labelled:
            (vl if is_val else tl).append(label_index[label])
    if not val:  # tiny data: hold out the last record so evaluation is honest
        if len(train) < 2:
            raise EdgekdError(f"data at {p} has only {len(train)} record: need at least 2 (one is held out)")
        val.append(train.pop())
        if labelled:
            vl.append(tl.pop())
    if not train:
        train.append(val.pop(0))
        if labelled:
            tl.append(vl.pop(0))
    return Corpus(train, val, tl if labelled else None, vl if labelled else None, source=str(p),
                  digest=h.hexdigest(), label_names=label_names)


def load_corpus(data: str | os.PathLike | None) -> Corpus:
    if data is None or str(data) == "builtin":
        return load_builtin()
    return load_user(data)
