"""The built-in teacher: `teacher train` is deterministic, and the shipped one is what its recipe says."""

import json

import pytest
import torch
from safetensors.torch import load_file

from edgekd.distill.teacher import train_builtin_teacher
from edgekd.models.builtin import BUILTIN_DIR, RECIPE


@pytest.mark.slow
def test_teacher_train_is_deterministic_and_records_its_recipe(tmp_path):
    a = train_builtin_teacher(tmp_path / "a", steps=2, quiet=True)
    b = train_builtin_teacher(tmp_path / "b", steps=2, quiet=True)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    r = json.loads((a / "recipe.json").read_text())
    for k in ("config", "seed", "steps", "data_hash", "tokenizer_hash", "torch_version", "final_validation_loss",
              "threads", "dtype"):
        assert k in r, k
    assert r["steps"] == 2 and r["seed"] == RECIPE["seed"] and r["config"] == RECIPE["config"]
    assert (a / "tokenizer.json").is_file() and (a / "config.json").is_file()
    if (BUILTIN_DIR / "recipe.json").is_file():  # the shipped teacher came from this very recipe
        shipped = json.loads((BUILTIN_DIR / "recipe.json").read_text())
        assert {k: v for k, v in shipped.items() if k in RECIPE} == RECIPE
        if shipped["data_hash"] == r["data_hash"]:  # same stdlib (Python version): same tokenizer too
            assert shipped["tokenizer_hash"] == r["tokenizer_hash"]


def test_shipped_teacher_loads_and_is_small():
    if not (BUILTIN_DIR / "model.safetensors").is_file():
        pytest.skip("built-in teacher not shipped in this checkout")
    from edgekd.models.loading import load_model

    m, tok, kind = load_model("builtin")
    assert kind == "causal-lm" and len(tok) == m.config.vocab_size == RECIPE["config"]["vocab_size"]
    size = sum(f.stat().st_size for f in BUILTIN_DIR.iterdir())
    assert size < 25e6
    r = json.loads((BUILTIN_DIR / "recipe.json").read_text())
    assert r["final_validation_loss"] < 5.0  # trained: far below the uniform log(4096) = 8.3
