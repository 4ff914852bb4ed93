import json

import pytest

from edgekd.data.corpus import builtin_files, load_builtin, load_user
from edgekd.errors import EdgekdError


def test_builtin_corpus_is_sorted_deterministic_and_excludes_tests():
    files = builtin_files()
    names = [n for n, _ in files]
    assert names == sorted(names) and len(names) > 100
    assert not any(part in ("test", "tests", "site-packages") for n in names for part in n.split("/"))
    a, b = load_builtin(), load_builtin()
    assert a.digest == b.digest and a.train == b.train and a.validation == b.validation
    assert len(a.validation) > 0 and len(a.train) > 10 * len(a.validation) // 2
    assert a.source == "builtin" and not a.is_classification


def test_text_file_and_directory(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("\n\n".join(f"paragraph {i} " * 5 for i in range(60)))
    c = load_user(f)
    assert len(c.train) + len(c.validation) == 60 and c.validation
    d = tmp_path / "dir"
    d.mkdir()
    for i in range(30):
        (d / f"{i}.txt").write_text(f"document {i}")
    c2 = load_user(d)
    assert sorted(c2.train + c2.validation) == sorted(f"document {i}" for i in range(30))


def test_jsonl_with_labels(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"t{i}", "label": ["neg", "pos"][i % 2]}) for i in range(40)))
    c = load_user(f)
    assert c.is_classification and c.label_names == ["neg", "pos"]
    assert len(c.train_labels) == len(c.train) and len(c.validation_labels) == len(c.validation)
    assert set(c.train_labels) <= {0, 1}


def test_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": [f"train {i}" for i in range(20)]}),
        "validation": datasets.Dataset.from_dict({"text": [f"val {i}" for i in range(5)]}),
    })
    dd.save_to_disk(str(tmp_path / "ds"))
    c = load_user(tmp_path / "ds")
    assert c.validation == [f"val {i}" for i in range(5)] and len(c.train) == 20


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing.txt", "does not exist"),
    (lambda p: (p / "empty.txt").write_text("  \n\n ") and p / "empty.txt", "empty"),
    (lambda p: (p / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n') and p / "bad.jsonl", "not valid JSON"),
    (lambda p: (p / "nt.jsonl").write_text('{"txt": "x"}\n') and p / "nt.jsonl", "'text'"),
    (lambda p: (p / "bin.txt").write_bytes(b"\xff\xfe\x00\xc3(") and p / "bin.txt", "UTF-8"),
    (lambda p: (p / "emptydir").mkdir() or p / "emptydir", "no .txt"),
])
def test_bad_data_is_one_line_error(tmp_path, make, match):
    with pytest.raises(EdgekdError, match=match) as e:
        load_user(make(tmp_path))
    assert "\n" not in str(e.value)
