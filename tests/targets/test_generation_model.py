"""The generation cost model against hand arithmetic, its monotonicity, calibration, target files'
generation keys, `edgekd predict` and the generative search."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import re

import pytest

from edgekd.errors import EdgekdError
from edgekd.formats import GENERATIVE, format_names
from edgekd.models.builtin import BUILTIN_DIR
from edgekd.targets import cost_generation as gen
from edgekd.targets.spec import known_targets, load_target, parse_target

REPO = Path(__file__).resolve().parents[2]
TEACHER = json.loads((Path(BUILTIN_DIR) / "config.json").read_text())
SMALL = {"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
         "tie_word_embeddings": False}
PROFILE_KEYS = {"device", "runtime", "format", "precision", "prompt_len", "decode_len", "runs", "threads", "ttft_ms",
                "prefill_tok_s", "decode_tok_s", "init_ms", "peak_rss_mb", "size_mb"}


pytestmark = pytest.mark.usefixtures("fake_host")  # tests/targets/conftest.py


def test_small_config_flops_bytes_and_times_by_hand():
    P, N = 8, 4
    # per layer: q 64x64, o 64x64, k and v 64x32, gate/up/down 64x128
    layer_w = 64 * 64 + 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128
    assert layer_w == 36864
    head = 64 * 100
    attn = 2 * 2 * 2 * (4 * 16) * (P * (P + 1) / 2)  # 2 layers x (QK^T, PV) x 2 flops x heads*hd x causal pairs
    w = gen.generation_work(SMALL, "float32", P, N, "onnx-genai")
    assert w.prefill_flops == pytest.approx(2 * P * 2 * layer_w + 2 * P * head + attn)
    lw = gen.generation_work(SMALL, "float32", P, N, "litert-lm")  # LM head on the last position only
    assert lw.prefill_flops == pytest.approx(2 * P * 2 * layer_w + 2 * 1 * head + attn)
    ctx = P + N / 2
    assert w.decode_flops == pytest.approx(2 * (2 * layer_w + head) + 2 * 2 * 2 * 4 * 16 * ctx)
    kv_tok = 2 * 2 * (2 * 16) * 4  # K and V, 2 layers, 2 kv heads x 16, float32
    weights32 = 4 * (2 * layer_w + head)
    assert w.weights_bytes == weights32
    assert w.decode_bytes == pytest.approx(weights32 + 4 * 64 + 4 * 5 * 64 + kv_tok * (ctx + 1) + 4 * 100)
    assert w.kv_bytes_full == kv_tok * (P + N)
    w4 = gen.generation_work(SMALL, "int4", P, N, "onnx-genai")
    assert w4.weights_bytes == pytest.approx((2 * layer_w + head) * (0.5 + 4 / 32))  # blocks of 32, fp32 scale
    # the roofline on raspberry-pi-5 (153.6 GFLOP/s, 614.4 GOP/s, 17.1 GB/s, a 2 MB L3) with the priors,
    # the cache shrunk so that the weights spill from it to DRAM
    cal = replace(gen.default_calibration("raspberry-pi-5", "onnx-genai"), cache_mb=0.1)
    assert cal.cache_gbs == pytest.approx(4 * 17.1)

    def read(n):
        return min(n, 0.1e6) / (4 * 17.1e9) + max(n - 0.1e6, 0) / (17.1e9 * cal.eff_mem)

    p = gen.predict(SMALL, "raspberry-pi-5", "float32", P, N, cal, fmt="onnx-genai")
    dc = 153.6e9 * cal.eff_decode_compute["float32"]
    step = max(read(w.decode_bytes), w.decode_flops / dc) + 2 * cal.layer_overhead_us * 1e-6 + cal.token_overhead_us * 1e-6
    prefill = max(w.prefill_flops / (153.6e9 * cal.eff_prefill["float32"]), read(weights32)) \
        + 2 * cal.layer_overhead_us * 1e-6
    assert p.decode_ms_per_token == pytest.approx(step * 1e3)
    assert p.decode_tok_s == pytest.approx(1 / step)
    assert p.prefill_tok_s == pytest.approx(P / prefill)
    first = max(read(w.decode_bytes - kv_tok * (ctx - P)), (w.decode_flops - 2 * 2 * 2 * 4 * 16 * (ctx - P)) / dc) \
        + 2 * cal.layer_overhead_us * 1e-6 + cal.token_overhead_us * 1e-6  # the first decode step, at context P
    assert p.ttft_ms == pytest.approx((cal.call_overhead_ms * 1e-3 + prefill + first) * 1e3)
    assert p.peak_rss_mb == pytest.approx(p.size_mb + p.kv_cache_mb + w.act_bytes / 1e6 + cal.base_mb)
    assert PROFILE_KEYS <= set(p.to_dict()) and p.to_dict()["runs"] == 0 and p.calibrated
    whole = gen.predict(SMALL, "raspberry-pi-5", "float32", P, N, fmt="onnx-genai")  # 0.33 MB: in the L3
    assert not whole.calibrated and whole.decode_ms_per_token == pytest.approx(
        (max(w.decode_bytes / (4 * 17.1e9), w.decode_flops / dc) + 2 * cal.layer_overhead_us * 1e-6
         + cal.token_overhead_us * 1e-6) * 1e3)


def test_monotone_in_precision_and_prompt():
    for t in ("android-arm64", "raspberry-pi-5", "jetson-orin-nano"):
        f32, i8, i4 = (gen.predict(TEACHER, t, p) for p in ("float32", "int8", "int4"))
        assert min(i4.decode_tok_s, i8.decode_tok_s) > f32.decode_tok_s
        if i4.format == "litert-lm":  # int4 = int8 where compute-bound (in cache): both multiply int8 activations
            assert i4.decode_tok_s >= i8.decode_tok_s
        else:  # onnx-genai's int4 multiplies float32 activations (accuracy_level=1), its int8 int8 ones
            assert i4.decode_tok_s < i8.decode_tok_s
        assert i4.size_mb < i8.size_mb < f32.size_mb
        ttfts = [gen.predict(TEACHER, t, "int4", prompt_len=P).ttft_ms for P in (16, 64, 256)]
        assert ttfts == sorted(ttfts) and ttfts[0] < ttfts[-1]
        longer = gen.predict(TEACHER, t, "float32", decode_len=1024)
        assert longer.decode_tok_s < f32.decode_tok_s and longer.peak_rss_mb > f32.peak_rss_mb  # KV cache grows


def _configs():
    """Large ones (memory- and compute-bound, they see the efficiencies) and tiny ones of the built-in
    family at 1 to 8 layers (overhead-bound, they see the per-layer and per-token costs)."""
    for L, h, f, v in ((2, 512, 1376, 32000), (4, 768, 2048, 32000), (8, 1536, 4096, 32000), (1, 64, 172, 4096),
                       (4, 64, 172, 4096), (8, 128, 344, 4096)):
        yield {**TEACHER, "num_hidden_layers": L, "hidden_size": h, "intermediate_size": f,
               "num_attention_heads": h // 64, "num_key_value_heads": h // 64, "vocab_size": v}


def test_calibration_recovers_known_factors():
    target = "raspberry-pi-4"  # slow memory: the larger configs decode memory-bound
    prior = gen.default_calibration(target)
    truth = replace(prior, eff_prefill={"float32": 0.31, "int8": 0.17, "int4": 0.12}, eff_mem=0.42,
                    layer_overhead_us=35.0, token_overhead_us=260.0, call_overhead_ms=4.0, init_ms=300.0, base_mb=75.0)
    ms = []
    for cfg in _configs():
        for prec in ("float32", "int8", "int4"):
            for P in (32, 256):
                p = gen.predict(cfg, target, prec, P, 64, truth)
                prof = {"prompt_len": P, "decode_len": 64, "threads": 4, "format": "litert-lm",
                        "ttft_ms": {"mean": p.ttft_ms, "median": p.ttft_ms}, "decode_tok_s": p.decode_tok_s,
                        "init_ms": p.init_ms, "peak_rss_mb": p.peak_rss_mb}
                ms.append(gen.measurement_from_profile(prof, cfg, prec))
    cal = gen.calibrate(ms, target)
    for prec, v in truth.eff_prefill.items():
        assert cal.eff_prefill[prec] == pytest.approx(v, rel=0.03)
    for k in ("eff_mem", "layer_overhead_us", "token_overhead_us", "call_overhead_ms", "init_ms", "base_mb"):
        assert getattr(cal, k) == pytest.approx(getattr(truth, k), rel=0.03), k
    assert cal.fit["median_abs_rel_err"] < 0.01 and cal.n_measurements == len(ms)
    back = gen.GenerationCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    p = gen.predict(TEACHER, target, "int4", calibration=back)
    assert p.calibrated and p.decode_tok_s == pytest.approx(
        gen.predict(TEACHER, target, "int4", calibration=truth).decode_tok_s, rel=0.02)


def test_calibration_save_and_bad_measurements(tmp_path):
    cal = gen.default_calibration("android-arm64")
    path = cal.save(tmp_path / "c.json")
    assert gen.GenerationCalibration.from_dict(json.loads(path.read_text())) == cal
    old = {k: v for k, v in cal.to_dict().items() if k not in ("cache_mb", "cache_gbs")} | {"eff_decode_compute": 0.3}
    back = gen.GenerationCalibration.from_dict(old)  # saved before the cache term and per-precision decode
    assert back.eff_decode_compute == {"float32": 0.3, "int8": 0.3, "int4": 0.3}
    assert back.cache_mb == gen.CACHE_MB_UNKNOWN and back.cache_gbs == pytest.approx(4 * 51.2)
    assert gen.predict(TEACHER, "android-arm64", "int4", calibration=back).decode_tok_s > 0
    with pytest.raises(EdgekdError, match="no measurements"):
        gen.calibrate([], "android-arm64")
    with pytest.raises(EdgekdError, match="decode_tok_s"):
        gen.measurement_from_profile({"prompt_len": 8, "decode_len": 8, "ttft_ms": 3.0}, TEACHER, "int4")
    with pytest.raises(EdgekdError, match="ttft_ms must be a positive"):
        gen.measurement_from_profile({"prompt_len": 8, "decode_len": 8, "ttft_ms": {"max": 1}, "decode_tok_s": 3},
                                   TEACHER, "int4")
    with pytest.raises(EdgekdError, match="unknown precision"):
        gen.predict(TEACHER, "android-arm64", "int2")
    with pytest.raises(EdgekdError, match="not filled in"):
        gen.predict(TEACHER, "host")  # the host's facts are measured explicitly (measure_target)


# --- target files --------------------------------------------------------------------------------

def test_every_target_has_a_generation_budget_and_the_flagship_loads():
    for n in known_targets():
        t = load_target(n)
        b = t.generation_budget
        assert b and b["decode_tok_s"] > 0 and b["ttft_ms"] > 0 and b["prompt_len"] > 0 and b["decode_len"] > 0, n
        assert t.runtime["generative_format"] in format_names(GENERATIVE)
    f = load_target("android-arm64-flagship")
    assert f.cpu["peak_gflops_fp32"] == pytest.approx(3.3 * 32 + 3 * 3.15 * 16)
    assert f.cpu["peak_gops_int8"] == pytest.approx(3.3 * 128 + 3 * 3.15 * 64)
    assert f.memory["bandwidth_gbs"] == pytest.approx(8533 * 8 / 1000, rel=1e-3)
    assert gen.target_format(f) == "litert-lm" and f.data["sources"]


GOOD = (REPO / "targets" / "raspberry-pi-5.toml").read_text()


@pytest.mark.parametrize("edit, key, problem", [
    (lambda s: s.replace('generative_format = "litert-lm"', 'generative_format = "gguf"'),
     "runtime.generative_format", "unknown value"),
    (lambda s: re.sub(r"decode_tok_s = [0-9.]+", "decode_tok_s = -5.0", s), "budget.decode_tok_s", "positive"),
    (lambda s: s.replace("ttft_ms = 2000.0", 'ttft_ms = "fast"'), "budget.ttft_ms", "must be a number"),
    (lambda s: s.replace("prompt_len = 64", "prompt_len = 6.5"), "budget.prompt_len", "must be an integer"),
    (lambda s: s.replace("prompt_len = 64\n", ""), "budget.prompt_len", "missing key"),
])
def test_bad_generation_keys_name_file_and_key(tmp_path, edit, key, problem):
    text = edit(GOOD)
    assert text != GOOD
    p = tmp_path / "raspberry-pi-5.toml"
    p.write_text(text)
    with pytest.raises(EdgekdError) as e:
        parse_target(p)
    assert str(p) in str(e.value) and key in str(e.value) and problem in str(e.value)


def test_a_file_without_generation_keys_still_loads(tmp_path):
    text = "\n".join(line for line in GOOD.splitlines()
                     if not line.startswith(("generative_format", "decode_tok_s", "ttft_ms", "prompt_len", "decode_len")))
    p = tmp_path / "raspberry-pi-5.toml"
    p.write_text(text)
    t = parse_target(p)
    assert t.generation_budget is None and gen.target_format(t) == "litert-lm"


# --- edgekd predict ------------------------------------------------------------------------------

def _cli(capsys, *args) -> tuple[int, str, str]:
    from edgekd.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_predict_cli_json_table_and_exit_codes(capsys, tmp_path):
    code, out, _ = _cli(capsys, "predict", str(BUILTIN_DIR), "--target", "android-arm64", "--precision", "int4", "--json")
    assert code == 0
    rec = json.loads(out)
    assert PROFILE_KEYS | {"prefill_ms", "decode_ms_per_token", "bound", "kv_cache_mb", "weights_mb", "calibrated"} <= set(rec)
    assert rec == json.loads(json.dumps(gen.predict(TEACHER, "android-arm64", "int4", 64, 128).to_dict()))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(SMALL))
    code, out, _ = _cli(capsys, "predict", str(cfg), "--target", "host", "--precision", "fp32", "--prompt-len", "16",
                        "--decode-len", "8", "--json")
    assert code == 0 and json.loads(out)["prompt_len"] == 16 and json.loads(out)["device"] == "host"
    code, out, _ = _cli(capsys, "predict", str(cfg), "--target", "raspberry-pi-5", "--precision", "int8")
    assert code == 0 and "decode" in out and "time to first token" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for args, words in (((str(cfg), "--target", "nope", "--precision", "int4"), "unknown target"),
                        ((str(cfg), "--target", "host", "--precision", "int3"), "unknown precision"),
                        ((str(tmp_path / "missing"), "--target", "host", "--precision", "int4"), "does not exist"),
                        ((str(bad), "--target", "host", "--precision", "int4"), "not valid JSON")):
        code, out, err = _cli(capsys, "predict", *args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


# --- the generative search -------------------------------------------------------------------------

def test_generative_search_picks_the_largest_fitting_candidate(tmp_path):
    from edgekd.models.arch import narrowing_problem, param_count
    from edgekd.search import OVERRIDE_KEYS, search_student
    from edgekd.search.student import SearchResult

    from edgekd.models.builtin import demo_budget

    demo = demo_budget("generation", "android-arm64")  # the built-in family's budget on the target
    res = search_student(TEACHER, "android-arm64", demo, cost_model="generation")
    b = load_target("android-arm64").generation_budget | demo
    assert res.generation["budget"] == b and res.generation["format"] == "litert-lm"
    rows = res.table
    assert {r["precision"] for r in rows} == {"float32", "int8", "int4"}
    fit = [r for r in rows if r["decode_tok_s"] >= b["decode_tok_s"] and r["ttft_ms"] <= b["ttft_ms"]
           and r["size_mb"] <= load_target("android-arm64").budget["max_model_mb"] and r["peak_mem_mb"] <= 8192 * 0.5
           and narrowing_problem(TEACHER, {**TEACHER, **{k: r[k] for k in OVERRIDE_KEYS}}) is None]
    assert [r["fits"] for r in rows] == [r in fit for r in rows]
    chosen = res.choice_row
    assert chosen["params"] == max(r["params"] for r in fit) and chosen["fits"]
    assert 0.3 < chosen["params"] / param_count(TEACHER) < 0.7  # the default budget: about half the teacher
    pred = res.generation["predicted"]
    assert pred["decode_tok_s"] == pytest.approx(chosen["decode_tok_s"], rel=1e-3) and res.predicted_ms is None
    res.save(tmp_path)
    back = SearchResult.load(tmp_path)
    assert back.generation == json.loads(json.dumps(res.generation)) and back.choice == res.choice
    assert (tmp_path / "search.png").stat().st_size > 0
    assert "decode_tok_s" in (tmp_path / "candidates.csv").read_text().splitlines()[0]
    old = json.loads((tmp_path / "candidates.json").read_text())
    del old["generation"]  # a result saved before generative searches
    (tmp_path / "candidates.json").write_text(json.dumps(old))
    assert SearchResult.load(tmp_path).generation is None


def test_generative_search_overrides_and_refusals():
    from edgekd.search import search_student

    loose = search_student(TEACHER, "android-arm64", {"decode_tok_s": 10, "ttft_ms": 1000}, cost_model="generation")
    assert loose.choice_row["precision"] == "float32"  # everything fits: the largest, the most accurate
    only_f32 = search_student(TEACHER, "android-arm64", {"decode_tok_s": 1000}, cost_model="generation",
                              precisions=("float32",))
    assert {r["precision"] for r in only_f32.table} == {"float32"}
    with pytest.raises(EdgekdError, match=r"decode >= 1e\+06 tok/s.*the nearest.*tok/s decode"):
        search_student(TEACHER, "android-arm64", {"decode_tok_s": 1e6}, cost_model="generation")
    with pytest.raises(EdgekdError, match="TTFT <= 0.001 ms"):
        search_student(TEACHER, "android-arm64", {"ttft_ms": 0.001}, cost_model="generation")
    with pytest.raises(EdgekdError, match="unknown generation budget"):
        search_student(TEACHER, "android-arm64", {"tokens_per_s": 5}, cost_model="generation")
    with pytest.raises(TypeError, match="GenerationCalibration"):
        search_student(TEACHER, "android-arm64", {}, cost_model="generation", calibration=object())
    cal = replace(gen.default_calibration("android-arm64"), eff_mem=0.06)  # a slow device
    fast = search_student(TEACHER, "android-arm64", {"decode_tok_s": 1000}, cost_model="generation")
    slow = search_student(TEACHER, "android-arm64", {"decode_tok_s": 1000}, cost_model="generation", calibration=cal)
    assert slow.calibrated and not fast.calibrated and slow.choice != fast.choice
    assert slow.choice_row["decode_tok_s"] >= 1000 and slow.generation["predicted"]["calibrated"]
