import shutil

import pytest

from edgekd.errors import EdgekdError
from edgekd.models.loading import load_model


def test_loads_teacher_and_tokenizer(teacher_dir):
    m, tok, kind = load_model(teacher_dir)
    assert kind == "causal-lm" and len(tok) == m.config.vocab_size and not m.training


def test_classifier_config_loads_sequence_classification(tmp_path):
    from tests.distill.helpers import tiny_teacher

    d = tiny_teacher(tmp_path / "clf", classifier_labels=3, train_steps=0)
    m, _, kind = load_model(d)
    assert kind == "classifier" and type(m).__name__.endswith("ForSequenceClassification")


@pytest.mark.parametrize("damage, match", [
    ("missing", "does not exist"),
    ("no_config", "no config.json"),
    ("bad_config", "corrupt"),
    ("bad_weights", "safetensors"),
    ("no_weights", "no model weights"),
])
def test_broken_model_dirs_are_one_line_errors(teacher_dir, tmp_path, damage, match):
    d = tmp_path / "m"
    if damage != "missing":
        shutil.copytree(teacher_dir, d)
    if damage == "no_config":
        (d / "config.json").unlink()
    elif damage == "bad_config":
        (d / "config.json").write_text("{not json")
    elif damage == "bad_weights":
        (d / "model.safetensors").write_bytes(b"\x00" * 64)
    elif damage == "no_weights":
        (d / "model.safetensors").unlink()
    with pytest.raises(EdgekdError, match=match) as e:
        load_model(d)
    assert "\n" not in str(e.value)
