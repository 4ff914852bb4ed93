"""Tables as data: .csv/.tsv (stdlib csv), .parquet (pyarrow), and --text-column/--label-column on
every table source; the token cache keyed by split and that split's own texts."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from edgekd.data.corpus import load_user
from edgekd.errors import EdgekdError


def _write_csv(path, rows, header=("text", "label"), delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_is_one_record_per_row_with_int_labels(tmp_path):
    rows = [(f'review {i}, with a comma and "quotes"\nand a second line', i % 3) for i in range(600)]
    c = load_user(_write_csv(tmp_path / "reviews.csv", rows))
    assert len(c.train) + len(c.validation) == 600 and c.validation
    assert c.is_classification and c.label_names == ["0", "1", "2"]
    assert set(c.train_labels) == {0, 1, 2}
    assert any(t.startswith("review 0, with a comma") and "\n" in t for t in c.train + c.validation)


def test_csv_columns_fallbacks_and_options(tmp_path):
    c = load_user(_write_csv(tmp_path / "s.csv", [(f"s {i}", "pos" if i % 2 else "neg") for i in range(20)],
                             header=("sentence", "label")))
    assert c.is_classification and c.label_names == ["neg", "pos"]
    f = _write_csv(tmp_path / "r.tsv", [(f"body {i}", i % 2, "x") for i in range(20)],
                   header=("review_body", "stars", "other"), delimiter="\t")
    c = load_user(f, text_column="review_body", label_column="stars")
    assert sorted(c.train + c.validation) == sorted(f"body {i}" for i in range(20)) and c.is_classification
    with pytest.raises(EdgekdError, match=r"no 'text' text column.*review_body.*--text-column") as e:
        load_user(f)
    assert "\n" not in str(e.value)
    with pytest.raises(EdgekdError, match=r"no column 'stars2'.*--label-column"):
        load_user(f, text_column="review_body", label_column="stars2")
    (tmp_path / "nohead.csv").write_text("")
    with pytest.raises(EdgekdError, match="header"):
        load_user(tmp_path / "nohead.csv")


def test_parquet_with_and_without_pyarrow(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": [f"doc {i}" for i in range(30)], "y": [i % 2 for i in range(30)]}),
                   str(tmp_path / "d.parquet"))
    c = load_user(tmp_path / "d.parquet")  # 'content' is a fallback text column; no default label column
    assert sorted(c.train + c.validation) == sorted(f"doc {i}" for i in range(30)) and not c.is_classification
    c = load_user(tmp_path / "d.parquet", label_column="y")
    assert c.is_classification and c.label_names == ["0", "1"]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(EdgekdError, match="not a readable Parquet"):
        load_user(tmp_path / "bad.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(EdgekdError, match=r"needs the 'pyarrow' package: pip install pyarrow") as e:
        load_user(tmp_path / "d.parquet")
    assert "\n" not in str(e.value)


def test_columns_on_jsonl_and_saved_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"review_text": f"t{i}", "cls": i % 2}) for i in range(20)))
    c = load_user(f, text_column="review_text", label_column="cls")
    assert c.is_classification and len(c.train) + len(c.validation) == 20
    with pytest.raises(EdgekdError, match="'text'"):
        load_user(f)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"sentence": [f"a {i}" for i in range(10)],
                                                                   "labels": [i % 2 for i in range(10)]}),
                               "validation": datasets.Dataset.from_dict({"sentence": ["v 0", "v 1"], "labels": [0, 1]})})
    dd.save_to_disk(str(tmp_path / "ds"))
    c = load_user(tmp_path / "ds")
    assert c.validation == ["v 0", "v 1"] and c.validation_labels == [0, 1] and len(c.train) == 10
    with pytest.raises(EdgekdError, match=r"split train\) has no column 'txt'"):
        load_user(tmp_path / "ds", text_column="txt")


def test_dataset_split_gets_its_own_token_cache(tmp_path, monkeypatch):
    """The same texts split two ways (hash split of a .jsonl, and a DatasetDict's own validation split)
    have the same corpus digest; their token caches must not be shared."""
    datasets = pytest.importorskip("datasets")
    from edgekd.data.batching import encode_texts
    from edgekd.data.cache import split_tokens
    from edgekd.data.tokenizer import train_tokenizer
    from edgekd.distill.config import DistillConfig
    from edgekd.distill.data import RunData

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    texts = [f"record number {i} says {'abc'[i % 3] * (i % 7 + 1)}" for i in range(200)]
    tok = train_tokenizer(texts, vocab_size=300)
    (tmp_path / "all.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts[:150]}),
                          "validation": datasets.Dataset.from_dict({"text": texts[150:]})}).save_to_disk(
        str(tmp_path / "dd"))
    a, b = load_user(tmp_path / "all.jsonl"), load_user(tmp_path / "dd")
    assert a.digest == b.digest and a.validation != b.validation  # what the old key saw as the same data
    split_tokens(a, "validation", tok), split_tokens(a, "train", tok)  # fill the cache with a's splits first
    assert split_tokens(b, "validation", tok).tolist() == encode_texts(texts[150:], tok).tolist()
    data = RunData(DistillConfig(data=str(tmp_path / "dd"), seq_len=8, eval_blocks=1000), tok, "causal-lm", 0, 1, 64)
    held_out = encode_texts(texts[150:], tok)
    n = held_out.numel() // 8 * 8
    assert data.heldout_ids.reshape(-1).tolist() == held_out[:n].tolist()
    assert len(list((tmp_path / "cache" / "tokens").glob("validation-*.safetensors"))) == 2
