"""Students the runtimes quantise the way phones do (issue 21 item 4): quantised candidates whose every weight
input is whole 32-wide blocks, so the searched int4 student gets LiteRT's blockwise recipe; where the teacher's
sizes forbid it, the search result says which recipe the student gets and why."""

from __future__ import annotations

import json

from edgekd.models.builtin import BUILTIN_DIR, demo_budget
from edgekd.search import SearchResult, candidates, search_student

BUILTIN = json.loads((BUILTIN_DIR / "config.json").read_text())  # hidden 256, 4 heads of 64, FFN 688
TINY = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4)  # head size 16: widths 16, 32, 48, 64
LOOSE = {"decode_tok_s": 1.0, "ttft_ms": 1e6}


def _inputs(c: dict) -> tuple[int, int, int]:
    """Every weight's input size of a Llama-shaped candidate: hidden (q/k/v, gate/up, lm_head), FFN (down),
    heads x head size (o_proj)."""
    return c["hidden_size"], c["intermediate_size"], c["num_attention_heads"] * c["head_dim"]


def test_quantised_candidates_are_whole_blocks_and_float_ones_keep_their_sizes():
    for teacher in (BUILTIN, TINY):
        cands = candidates(teacher, ("float32", "int8", "int4"))
        quant = [c for c in cands if c["precision"] != "float32"]
        floats = [c for c in cands if c["precision"] == "float32"]
        assert quant and floats
        for c in quant:
            assert all(n % 32 == 0 for n in _inputs(c)), c
            assert c["intermediate_size"] <= teacher["intermediate_size"] and c["hidden_size"] % c["head_dim"] == 0
        # the search still has a choice: several depths, widths and FFN sizes, and each int4 shape also in int8
        assert len({c["num_hidden_layers"] for c in quant}) > 1 and len({c["intermediate_size"] for c in quant}) > 2
        key = lambda c: tuple(v for k, v in c.items() if k != "precision")  # noqa: E731
        assert {key(c) for c in quant if c["precision"] == "int4"} == {key(c) for c in quant if c["precision"] == "int8"}
        # float32 candidates are as before: widths any multiple of the head size, FFN a multiple of 8
        assert any(any(n % 32 for n in _inputs(c)) for c in floats)
    assert {c["hidden_size"] for c in candidates(TINY, ("int4",)) if c["head_dim"] == 16} == {32, 64}
    assert {c["hidden_size"] for c in candidates(TINY, ("float32",)) if c["head_dim"] == 16} == {16, 32, 48, 64}
    # the built-in teacher's own FFN (688) is not whole blocks: its quantised students take at most 672
    assert max(c["intermediate_size"] for c in candidates(BUILTIN, ("int4",))) == 672
    assert max(c["intermediate_size"] for c in candidates(BUILTIN, ("float32",))) == 688


def test_the_built_in_default_searches_a_blockwise_int4_student(tmp_path):
    """`edgekd distill --target android-arm64` on the built-in teacher: an int4 student of 2 of its 4 layers at
    full width with a 672-wide FFN, which litert-lm's export quantises in blocks of 32 (the export's own choice
    of recipe agrees with what the search says)."""
    from edgekd.export.generative_export import recipe_for

    res = search_student(BUILTIN, "android-arm64", demo_budget("generation", "android-arm64"), cost_model="generation")
    c = res.choice
    assert (c["precision"], c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"]) == ("int4", 2, 256, 672)
    r = res.quant_recipe
    assert (r["format"], r["recipe"], r["blockwise"]) == ("litert-lm", "dynamic_wi4b32_afp32", True)
    assert "multiple of the 32-wide block" in r["why"]
    assert recipe_for("litert-lm", "int4", res.student_config(BUILTIN))[0] == "dynamic_wi4b32_afp32"
    res.save(tmp_path)
    assert SearchResult.load(tmp_path).quant_recipe == r  # a resumed job says the same
    from edgekd.report.job import recipe_words  # report.md's sentence beside the choice

    assert recipe_words({"quant_recipe": r}) == (" Its int4 litert-lm file gets `dynamic_wi4b32_afp32`, blockwise "
                                                 "(blocks of 32 input values): every weight's input size is a multiple "
                                                 "of the 32-wide block.")


def test_a_teacher_whose_sizes_forbid_blocks_gets_per_channel_and_the_reason():
    from edgekd.export.generative_export import recipe_for

    # head size 24 within a hidden size of 72: every width is a multiple of 24, none of 32 too
    odd_heads = dict(TINY, hidden_size=72, num_attention_heads=3, num_key_value_heads=3, intermediate_size=200)
    res = search_student(odd_heads, "android-arm64", LOOSE, cost_model="generation", precisions=("int4",))
    r = res.quant_recipe
    assert (r["recipe"], r["blockwise"], r["grain"]) == ("dynamic_wi4_afp32", False, "one scale per output channel")
    assert "head size 24" in r["why"] and "hidden size 72" in r["why"] and "not blockwise" in r["why"]
    assert recipe_for("litert-lm", "int4", res.student_config(odd_heads))[0] == "dynamic_wi4_afp32"  # the export agrees
    assert candidates(odd_heads, ("int4",))  # the int4 candidates remain, at the sizes the teacher allows
    # an FFN narrower than one block
    thin = dict(TINY, intermediate_size=24)
    r = search_student(thin, "android-arm64", LOOSE, cost_model="generation", precisions=("int4",)).quant_recipe
    assert not r["blockwise"] and "FFN size 24 is narrower than one 32-wide block" in r["why"]
    # onnxruntime's MatMulNBits still quantises in blocks of 32, padding the last one: said so
    r = search_student(thin, "raspberry-pi-5", LOOSE, cost_model="generation", precisions=("int4",),
                       fmt="onnx-genai").quant_recipe
    assert r["blockwise"] and "padded with zeros" in r["why"] and "FFN size 24" in r["why"]
    # float32, or a logits format (the converters' own int8): no weight recipe to state
    assert search_student(TINY, "android-arm64", LOOSE, cost_model="generation",
                          precisions=("float32",)).quant_recipe is None
    assert search_student(TINY, "raspberry-pi-5", {"latency_ms": 1e9}, precisions=("int8",)).quant_recipe is None
