"""The cost model on hand-computed cases, and calibration recovering factors it was not told."""

from __future__ import annotations


import pytest

from edgekd.targets import cost_latency as lat
from edgekd.targets.fitting import calibration_path, device_facts, load_calibration
from edgekd.targets.spec import load_target

TINY = dict(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2)



def test_single_matmul_flops_bytes_and_roofline():
    op = lat.matmul_op("x", 64, 256, 512)
    assert op.flops == 2 * 64 * 256 * 512
    assert op.bytes == 4 * (64 * 256 + 64 * 512 + 256 * 512)
    q = lat.matmul_op("x", 64, 256, 512, "int8")
    assert q.kind == "matmul_int8" and q.bytes == 64 * 256 + 256 * 512 + 12 * 64 * 512
    # 16.8 MFLOP at 100 GFLOP/s * 0.5 = 0.3355 ms; 786 KB at 10 GB/s * 1.0 = 0.0786 ms -> compute-bound.
    t, bound = lat.op_time_s(op, 100e9, 400e9, 10e9, 0.5, 1.0, 5e-6)
    assert bound == "compute"
    assert t == pytest.approx(2 * 64 * 256 * 512 / 50e9 + 5e-6)
    # At 0.1 GB/s it is memory-bound.
    t, bound = lat.op_time_s(op, 100e9, 400e9, 0.1e9, 0.5, 1.0, 0.0)
    assert bound == "memory" and t == pytest.approx(op.bytes / 0.1e9)


def test_tiny_config_op_totals():
    s = 4
    ops = lat.graph_ops(TINY, s)
    flops = {o.name: o.flops * o.count for o in ops}
    # per layer: q,k,v,o 2*s*8*8 each; gate, up 2*s*8*16, down 2*s*16*8; two layers; lm_head 2*s*8*100
    assert flops["q_proj"] == 2 * (2 * s * 8 * 8)
    assert flops["gate_proj"] == 2 * (2 * s * 8 * 16)
    assert flops["down_proj"] == 2 * (2 * s * 16 * 8)
    assert flops["lm_head"] == 2 * s * 8 * 100
    assert flops["attn_scores"] == 2 * (2 * 2 * s * s * 4)  # heads * s*s * head_dim, two layers
    mm = sum(o.flops * o.count for o in ops if o.kind == "matmul")
    assert mm == 2 * (4 * 2 * s * 64 + 3 * 2 * s * 128) + 2 * s * 800
    # weights read once per inference: every matmul weight, float32
    wbytes = sum(o.count * 4 * (o.flops / (2 * s)) for o in ops if o.kind == "matmul")
    assert wbytes == 4 * (2 * (4 * 64 + 3 * 128) + 800)
    assert lat.param_count(TINY) == 100 * 8 * 2 + 2 * (4 * 64 + 3 * 128 + 16) + 8
    assert {o.kind for o in lat.graph_ops(TINY, s, "int8")} >= {"matmul_int8", "quantize"}
    assert lat.model_size_mb(TINY, "int8") < lat.model_size_mb(TINY) / 3


def test_prediction_sums_ops_and_scales():
    t = load_target("raspberry-pi-5")
    p = lat.predict(TINY, t, 16)
    assert p.total_ms == pytest.approx(sum(r["ms"] for r in p.per_op) + lat.DEFAULT_CALL_OVERHEAD_US["litert"] / 1e3)
    big = dict(TINY, hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=4)
    assert lat.predict(big, t, 128).total_ms > lat.predict(big, t, 16).total_ms
    assert lat.predict(big, t, 64, threads=1).total_ms > lat.predict(big, t, 64, threads=4).total_ms
    assert lat.predict(big, t, 64, "int8").total_ms < lat.predict(big, t, 64).total_ms


def _synthetic(target, truth, configs, seqs, by_kind):
    out = []
    for cfg in configs:
        for s in seqs:
            for prec in ("float32", "int8"):
                p = lat.predict(cfg, target, s, prec, calibration=truth)
                m = {"config": cfg, "seq_len": s, "precision": prec, "measured_ms": p.total_ms}
                if by_kind:
                    bk = {}
                    for r in p.per_op:
                        bk[r["kind"]] = bk.get(r["kind"], 0.0) + r["ms"]
                    m["by_kind"] = bk
                out.append(m)
    return out


@pytest.mark.parametrize("by_kind", [True, False])
def test_calibration_recovers_known_factors(by_kind):
    target = load_target("raspberry-pi-5")
    truth = lat.default_calibration(target)
    truth.facts = device_facts(target)
    truth.eff_compute.update(matmul=0.21, matmul_int8=0.11, attention=0.07)
    truth.eff_mem.update(norm=0.9, elementwise=0.35, softmax=0.25, quantize=0.3)
    truth.overhead_us, truth.call_overhead_us = 9.0, 55.0
    base = dict(vocab_size=2048, num_attention_heads=2, num_key_value_heads=2)
    configs = [dict(base, hidden_size=h, intermediate_size=f, num_hidden_layers=L)
               for h, f, L in [(64, 172, 1), (128, 344, 2), (128, 256, 3), (192, 512, 2), (256, 688, 1), (256, 688, 4),
                               (64, 128, 4), (192, 344, 3)]]
    meas = _synthetic(target, truth, configs, (8, 32, 128), by_kind)
    cal = lat.calibrate(meas, target, strength=1e-4 if by_kind else 1e-3, iterations=200)
    # every synthetic measurement is reproduced
    for m in meas:
        p = lat.predict(m["config"], target, m["seq_len"], m["precision"], calibration=cal).total_ms
        assert p == pytest.approx(m["measured_ms"], rel=0.03)
    if by_kind:  # per-kind rows identify the factors themselves
        assert cal.eff_compute["matmul"] == pytest.approx(0.21, rel=0.05)
        assert cal.eff_compute["matmul_int8"] == pytest.approx(0.11, rel=0.05)
        assert cal.eff_mem["elementwise"] == pytest.approx(0.35, rel=0.1)
        assert cal.overhead_us == pytest.approx(9.0, rel=0.15)
    else:  # whole-model latencies: the dominant factor is still recovered
        assert cal.eff_compute["matmul"] == pytest.approx(0.21, rel=0.15)


def test_calibration_save_load_roundtrip(tmp_path):
    target = load_target("raspberry-pi-5")
    meas = [{"config": dict(TINY, hidden_size=64, intermediate_size=128), "seq_len": 32, "precision": "float32",
             "measured_ms": 1.5}]
    cal = lat.calibrate(meas, target)
    path = cal.save()
    assert path == calibration_path("raspberry-pi-5", "tflite") and path.is_file()
    back = load_calibration("raspberry-pi-5", "tflite", None, lat.Calibration)
    assert back == cal
    p = lat.predict(meas[0]["config"], target, 32, calibration=back).total_ms
    assert p == pytest.approx(1.5, rel=0.02)
    assert load_calibration("raspberry-pi-4", "tflite", None, lat.Calibration) is None


def test_measurement_from_profile_feeds_calibration():
    prof = {"device": "local", "format": "onnx", "p50_ms": 2.5, "mean_ms": 2.7, "seq_len": 32, "threads": 1, "ops": []}
    m = lat.measurement_from_profile(prof, TINY, "int8-dynamic")
    assert m["measured_ms"] == 2.5 and m["seq_len"] == 32 and m["precision"] == "int8" and m["threads"] == 1
    cal = lat.calibrate([m], "raspberry-pi-5")
    p = lat.predict(TINY, "raspberry-pi-5", 32, "int8", calibration=cal, threads=1).total_ms
    assert p == pytest.approx(2.5, rel=0.02)
    with pytest.raises(lat.EdgekdError, match="seq_len"):
        lat.measurement_from_profile({"p50_ms": 1.0}, TINY, "float32")
    with pytest.raises(lat.EdgekdError, match="precision"):
        lat.normalize_precision("int4")
