"""Text sources: the built-in stdlib corpus and user data, as lists of (text, label) records.

The built-in corpus is the Python source of the running interpreter's standard library: it is
present wherever edgekd runs, so the default job needs no download.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from edgekd.checks import parse_json_object
from edgekd.errors import EdgekdError
from edgekd.limits import folder_files

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
    label_values: list = field(default_factory=list)  # the labels as the data holds them; labels index this

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
    from edgekd.checks import text_file

    return text_file(path, "data file")


TEXT_COLUMNS = ("text", "sentence", "content", "document", "review", "body")  # tried in order
LABEL_COLUMNS = ("label", "labels")


def _pick(names, wanted: Optional[str], fallbacks: tuple, where: str, what: str, option: str,
          required: bool = True) -> Optional[str]:
    """The column to read: `wanted` (an error naming the columns there are when it is missing), else the
    first fallback present; None where none is and it is not required."""
    names = list(names)
    if wanted is not None:
        if wanted not in names:
            raise EdgekdError(f"{where} has no column {wanted!r} (it has {', '.join(map(str, names)) or 'none'}): "
                              f"pass the right {option}")
        return wanted
    for c in fallbacks:
        if c in names:
            return c
    if required:
        nor = f" (nor {', '.join(fallbacks[1:])})" if len(fallbacks) > 1 else ""
        raise EdgekdError(f"{where} has no {fallbacks[0]!r} {what} column{nor}; it has "
                          f"{', '.join(map(str, names)) or 'none'}: pass {option} NAME")
    return None


def _table_records(columns: dict, where: str, text_column: Optional[str], label_column: Optional[str],
                   split: Optional[str] = None) -> list[tuple[str, object, Optional[str]]]:
    """(text, label, split) rows of a column table (csv, parquet, a saved data set)."""
    tc = _pick(columns, text_column, TEXT_COLUMNS, where, "text", "--text-column")
    lc = _pick(columns, label_column, LABEL_COLUMNS, where, "label", "--label-column", required=label_column is not None)
    texts = columns[tc]
    labels = columns[lc] if lc else [None] * len(texts)
    bad = next((i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)), None)
    if bad is not None:
        raise EdgekdError(f"{where}: column {tc!r} holds {type(texts[bad]).__name__}, not text (row {bad + 1}): "
                          f"pass the text column with --text-column")
    return [(t or "", l, split) for t, l in zip(texts, labels)]


def _int_labels(labels: list) -> list:
    """CSV cells are strings: labels that are all integers ("0", "1", ...) become ints."""
    try:
        return [None if l in (None, "") else int(l) for l in labels]
    except (TypeError, ValueError):
        return [None if l == "" else l for l in labels]


def _read_csv(path: Path, text_column: Optional[str], label_column: Optional[str]) -> list:
    import csv
    import io

    text = _read_text_file(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if data_suffix(path) == ".tsv" else ",")
        rows = list(reader)
    except csv.Error as e:
        raise EdgekdError(f"{path} is not valid CSV ({e}): quote fields that hold the delimiter or newlines") from e
    if not reader.fieldnames:
        raise EdgekdError(f"{path} has no header row: the first line must name the columns (e.g. text,label)")
    columns = {c: [r.get(c) for r in rows] for c in reader.fieldnames}
    recs = _table_records(columns, str(path), text_column, label_column)
    if any(l is not None for _, l, _ in recs):
        recs = [(t, l, s) for (t, _, s), l in zip(recs, _int_labels([l for _, l, _ in recs]))]
    return recs


def _read_parquet(path: Path, text_column: Optional[str], label_column: Optional[str]) -> list:
    from edgekd.limits import regular_file

    regular_file(path, "data file")
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise EdgekdError(f"reading {path} needs the 'pyarrow' package: pip install pyarrow") from e
    try:
        table = pq.read_table(str(path))
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise EdgekdError(f"{path} is not a readable Parquet file ({type(e).__name__}): re-write it") from e
    return _table_records({c: table.column(c).to_pylist() for c in table.column_names}, str(path),
                          text_column, label_column)


def _read_jsonl(path: Path, text_column: Optional[str] = None, label_column: Optional[str] = None) -> list:
    rows = []
    for n, line in enumerate(_read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        obj = parse_json_object(line, f"{path}:{n}", "each line must be an object with a 'text' key")
        tc = _pick(obj, text_column, TEXT_COLUMNS, f"{path}:{n}", "text", "--text-column")
        if not isinstance(obj[tc], str):
            raise EdgekdError(f"{path}:{n} has no string {tc!r} field: each line must be an object with a {tc!r} key")
        lc = _pick(obj, label_column, LABEL_COLUMNS, f"{path}:{n}", "label", "--label-column", required=False)
        rows.append((obj[tc], obj.get(lc) if lc else None))
    return rows


def _read_saved_dataset(path: Path, text_column: Optional[str] = None, label_column: Optional[str] = None) -> list:
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
        parts = [(None, ds)]  # one split: held out by hash, like any other file
    rows = []
    for split, d in parts:
        where = f"the data set at {path}" + (f" (split {split})" if split else "")
        wanted = (text_column, label_column, *TEXT_COLUMNS, *LABEL_COLUMNS)  # read only the columns that may be used
        cols = {c: list(d[c]) if c in wanted else None for c in d.column_names}
        rows.extend(_table_records(cols, where, text_column, label_column, split))
    return rows


TABLE_SUFFIXES = (".jsonl", ".csv", ".tsv", ".parquet")
TEXT_SUFFIXES = (".txt", ".md", ".py")


def data_suffix(path: Path) -> str:
    """The suffix that says how to read a data file: 'x.jsonl.gz' -> '.jsonl' (read decompressed)."""
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def _read_table(path: Path, text_column: Optional[str], label_column: Optional[str]) -> list:
    """(text, label, split=None) records of a .jsonl, .csv/.tsv or .parquet file (.jsonl, .csv: or gzipped)."""
    if data_suffix(path) == ".jsonl":
        return [(t, l, None) for t, l in _read_jsonl(path, text_column, label_column)]
    if data_suffix(path) == ".parquet":
        return _read_parquet(path, text_column, label_column)
    return _read_csv(path, text_column, label_column)


def load_user(path: str | os.PathLike, text_column: Optional[str] = None, label_column: Optional[str] = None) -> Corpus:
    """A text file, a directory of text/table files, a .jsonl, .csv/.tsv or .parquet file, or a
    datasets.save_to_disk dir. Tables take their text from `text_column` (default: the first of
    TEXT_COLUMNS there) and their labels from `label_column` (default: 'label' or 'labels', if any)."""
    p = Path(path)
    if not p.exists():
        raise EdgekdError(f"data path {p} does not exist: pass a text file, a directory of .txt files, a .jsonl, "
                          f".csv or .parquet file, or a saved data set")
    records: list[tuple[str, object, Optional[str]]] = []  # (text, label, split or None)
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()
                       or (p / "state.json").exists()):
        folder_files(p, [f for f in p.rglob("*") if f.is_file()], "data set")
        records = _read_saved_dataset(p, text_column, label_column)
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and data_suffix(f) in (*TEXT_SUFFIXES, *TABLE_SUFFIXES))
        if not files:
            raise EdgekdError(f"data directory {p} holds no .txt, .jsonl, .csv or .parquet files: add some or pass "
                              f"another path")
        folder_files(p, files, "data folder")
        for f in files:
            rel = f.relative_to(p).as_posix()
            if data_suffix(f) in TABLE_SUFFIXES:
                records.extend(_read_table(f, text_column, label_column))
            else:
                records.append((_read_text_file(f), None, "validation" if _is_validation(rel) else "train"))
    elif data_suffix(p) in TABLE_SUFFIXES:
        records = _read_table(p, text_column, label_column)
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
    keys: list = []
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
                  digest=h.hexdigest(), label_names=label_names, label_values=keys)


def load_corpus(data: str | os.PathLike | None, text_column: Optional[str] = None,
                label_column: Optional[str] = None) -> Corpus:
    if data is None or str(data) == "builtin":
        return load_builtin()
    return load_user(data, text_column, label_column)
