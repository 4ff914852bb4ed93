"""The latency cost model: per-op FLOPs and bytes of a Llama-family student, a roofline on the
target, per-op overheads, and efficiency factors calibrated from measurements on the device.

Why a model and not a measurement: the student search weighs hundreds of candidates for a device
that may not be attached; one calibration per device makes the roofline's guesses honest there.

Time of one op (batch 1, prefill over the whole sequence, which is what the exported graph does):

    t = max(flops / (peak * eff_compute[kind]), bytes / (bandwidth * eff_mem[kind])) + overhead

and the model's latency is the sum over ops plus one per-call overhead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from edgekd import precision as precision_words
from edgekd.errors import EdgekdError
from edgekd.formats import GRAPH, export_format
from edgekd.models import arch as model_arch
from edgekd.targets.cost_model import CostModel, register_cost_model
from edgekd.targets.fitting import (SavedCalibration, device_facts, facts_for, fit_errors, levenberg_marquardt,
                                    measured_target, peaks)
from edgekd.targets.spec import Target

KINDS = ("gather", "norm", "matmul", "matmul_int8", "quantize", "attention", "softmax", "elementwise")
PRECISIONS = ("float32", "int8")

# Priors before any calibration: what a good CPU runtime reaches of the roofline, per op kind.
DEFAULT_EFF_COMPUTE = {"gather": 1.0, "norm": 0.1, "matmul": 0.5, "matmul_int8": 0.3, "quantize": 0.1,
                       "attention": 0.25, "softmax": 0.1, "elementwise": 0.1}
DEFAULT_EFF_MEM = {k: 0.6 for k in KINDS}
DEFAULT_OVERHEAD_US = {"onnxruntime": 4.0, "litert": 2.0}  # per op (our ops, not runtime nodes)
DEFAULT_CALL_OVERHEAD_US = {"onnxruntime": 30.0, "litert": 20.0}  # per inference call
RUNTIME_BASE_MB = {"onnxruntime": 30.0, "litert": 10.0}  # the runtime's own resident memory


def normalize_precision(precision: str) -> str:
    """edgekd.precision's word for PRECISION, limited to what the cost model knows (float32, int8)."""
    return precision_words.normalize_precision(precision, supported=PRECISIONS)


# --- the graph ----------------------------------------------------------------------------------

def arch_of(config: Any) -> dict[str, int | bool]:
    """The few numbers the cost model needs, from an HF config object or a plain dict of any supported
    family (GPT-2's n_embd, OPT's ffn_dim, ...): edgekd.models.arch, the one normaliser."""
    return model_arch.arch_of(config)


def param_count(config: Any) -> int:
    return model_arch.param_count(config)


@dataclass
class Op:
    """One op of the graph, `count` times (once per layer for per-layer ops)."""

    name: str
    kind: str
    flops: float
    bytes: float
    count: int = 1


def matmul_op(name: str, m: int, k: int, n: int, precision: str = "float32", count: int = 1) -> Op:
    """x[m,k] @ W[k,n]: 2mkn FLOPs; bytes: float32 activations and weights at 4 B, or for int8 the
    quantised activation and weights at 1 B plus the int32 result read and rescaled to float32."""
    if precision == "int8":  # int8 activation in, int32 accumulator out, then rescaled to float32
        return Op(name, "matmul_int8", 2.0 * m * k * n, 1.0 * m * k + 1.0 * k * n + 12.0 * m * n, count)
    return Op(name, "matmul", 2.0 * m * k * n, 4.0 * (m * k + m * n + k * n), count)


def _is_image(config: Any) -> bool:
    from edgekd.models.vision import is_image_classifier

    return is_image_classifier(config)


def image_ops(config: Any, precision: str = "float32") -> list[Op]:
    """The ops of one image classifier forward, batch 1, at its input size (models.vision.image_layers: every
    convolution, linear layer, norm and pooling with its shapes). A dense or pointwise convolution is a matmul
    (im2col: [Ho*Wo, Ci/groups*kh*kw] @ [.., Co]); a depthwise one, pooling and activations are memory-bound
    elementwise work; ViT's attention adds its scores and weighted sums per layer, as the LM's do."""
    from edgekd.models.vision import image_layers

    ops: list[Op] = []
    for layer in image_layers(config):
        kind, name = layer["kind"], layer["name"]
        if kind in ("conv", "linear") and not layer.get("depthwise"):
            if precision == "int8":
                ops.append(Op(f"{name}.quantize", "quantize", 4.0 * layer["m"] * layer["k"], 5.0 * layer["m"] * layer["k"]))
            ops.append(matmul_op(name, layer["m"], layer["k"], layer["n"], precision))
        elif kind == "attention":
            nh, s, hd = layer["heads"], layer["tokens"], layer["head_dim"]
            ops.append(Op(f"{name}.scores", "attention", 4.0 * nh * s * s * hd, 4.0 * (3 * s * nh * hd + 2 * nh * s * s)))
            ops.append(Op(f"{name}.softmax", "softmax", 6.0 * nh * s * s, 12.0 * nh * s * s))
        else:  # depthwise convolution, pooling, activation, norm: each output element read and written
            wb = 1.0 if precision == "int8" else 4.0
            ops.append(Op(name, "norm" if kind == "norm" else "elementwise", 2.0 * layer["out"] * layer.get("taps", 1),
                          wb * (layer["in"] + layer["out"]) + 4.0 * layer.get("weights", 0)))
    return ops


def graph_ops(config: Any, seq_len: int, precision: str = "float32") -> list[Op]:
    """The ops of one prefill pass, batch 1, over `seq_len` tokens (logits at every position); an image
    classifier's forward at its input size (`image_ops`, seq_len unused)."""
    precision = normalize_precision(precision)
    if _is_image(config):
        return image_ops(config, precision)
    a = arch_of(config)
    s, h, f, v = int(seq_len), a["hidden_size"], a["intermediate_size"], a["vocab_size"]
    nh, nkv, hd, L = a["num_attention_heads"], a["num_key_value_heads"], a["head_dim"], a["num_hidden_layers"]
    q, kv = nh * hd, nkv * hd
    ops: list[Op] = [Op("embed_tokens", "gather", 0.0, 8.0 * s + 2 * 4.0 * s * h)]

    def mm(name: str, k: int, n: int, count: int, shared_input: bool = False) -> list[Op]:
        out = []
        if precision == "int8" and not shared_input:  # dynamic quantisation of the activation, once per input
            out.append(Op(f"{name}.quantize", "quantize", 4.0 * s * k, 5.0 * s * k, count))
        out.append(matmul_op(name, s, k, n, precision, count))
        return out

    norm = lambda name: Op(name, "norm", 4.0 * s * h, 8.0 * s * h + 4.0 * h, L)  # noqa: E731
    ops.append(norm("input_layernorm"))
    ops += mm("q_proj", h, q, L) + mm("k_proj", h, kv, L, True) + mm("v_proj", h, kv, L, True)
    ops.append(Op("rope", "elementwise", 6.0 * s * (q + kv), 4.0 * (2 * s * (q + kv) + 2 * s * hd), L))
    ops.append(Op("attn_scores", "attention", 2.0 * nh * s * s * hd, 4.0 * (s * q + s * kv + nh * s * s), L))
    ops.append(Op("softmax", "softmax", 6.0 * nh * s * s, 4.0 * (3 * nh * s * s), L))  # mask add, exp, sum, div
    ops.append(Op("attn_weighted_sum", "attention", 2.0 * nh * s * s * hd, 4.0 * (nh * s * s + s * kv + s * q), L))
    ops += mm("o_proj", q, h, L)
    ops.append(Op("residual_add", "elementwise", 2.0 * s * h, 2 * 12.0 * s * h, L))  # two adds per layer
    ops.append(norm("post_attention_layernorm"))
    if a["gated_mlp"]:
        ops += mm("gate_proj", h, f, L) + mm("up_proj", h, f, L, True)
        ops.append(Op("silu_mul", "elementwise", 5.0 * s * f, 12.0 * s * f, L))
    else:  # GPT-2, OPT, BERT: up, activation, down
        ops += mm("up_proj", h, f, L)
        ops.append(Op("activation", "elementwise", 8.0 * s * f, 8.0 * s * f, L))
    ops += mm("down_proj", f, h, L)
    ops.append(Op("final_norm", "norm", 4.0 * s * h, 8.0 * s * h + 4.0 * h))
    ops += mm("lm_head", h, v, 1)
    return ops


def model_size_mb(config: Any, precision: str = "float32") -> float:
    """Weights on disk: matmul and embedding weights at the precision, norms at float32."""
    precision = normalize_precision(precision)
    n = param_count(config)
    if _is_image(config):  # every weight at the precision (convolutions and linear layers dominate)
        return n * (1 if precision == "int8" else 4) / 1e6
    a = arch_of(config)
    norms = a["num_hidden_layers"] * 2 * a["hidden_size"] + a["hidden_size"]
    wb = 1 if precision == "int8" else 4
    return ((n - norms) * wb + norms * 4) / 1e6


def peak_memory_mb(config: Any, seq_len: int, precision: str = "float32", runtime: str = "onnxruntime") -> float:
    """Resident memory of one inference: weights, the largest live activations, the runtime itself."""
    if _is_image(config):  # the largest layer's input and output live at once
        from edgekd.models.vision import image_layers

        acts = 4.0 * max((layer["in"] + layer["out"] for layer in image_layers(config)), default=0)
        return model_size_mb(config, precision) + acts / 1e6 + RUNTIME_BASE_MB.get(runtime, 20.0)
    a = arch_of(config)
    s, h, f, v = int(seq_len), a["hidden_size"], a["intermediate_size"], a["vocab_size"]
    acts = 4.0 * (s * v + 4 * s * h + 2 * s * f + 2 * a["num_attention_heads"] * s * s)
    return model_size_mb(config, precision) + acts / 1e6 + RUNTIME_BASE_MB.get(runtime, 20.0)


# --- calibration state ----------------------------------------------------------------------------

@dataclass
class Calibration(SavedCalibration):
    """Per-device efficiency factors (and the device facts they were fitted against)."""

    device: str
    fmt: str
    eff_compute: dict[str, float]
    eff_mem: dict[str, float]
    overhead_us: float
    call_overhead_us: float
    facts: dict[str, float] = field(default_factory=dict)  # peak_gflops_fp32, peak_gops_int8, bandwidth_gbs, threads
    n_measurements: int = 0
    fit: dict[str, float] = field(default_factory=dict)  # errors on the measurements it was fitted on


def default_calibration(target: Target | str, fmt: str | None = None) -> Calibration:
    t = measured_target(target)
    fmt = fmt or t.runtime["preferred_format"]
    rt = runtime_for(fmt)
    eff_compute = dict(DEFAULT_EFF_COMPUTE)
    if "cpu.peak_gflops_fp32" in t.measured:  # a measured peak is already what a GEMM achieves there
        eff_compute.update(matmul=1.0, matmul_int8=1.0)
    return Calibration(device=t.key, fmt=fmt, eff_compute=eff_compute, eff_mem=dict(DEFAULT_EFF_MEM),
                       overhead_us=DEFAULT_OVERHEAD_US[rt], call_overhead_us=DEFAULT_CALL_OVERHEAD_US[rt],
                       facts=device_facts(t))


def runtime_for(fmt: str) -> str:
    """The runtime of a logits-graph format (edgekd.formats), or one line naming the known ones."""
    return export_format(fmt, GRAPH).runtime


# --- prediction --------------------------------------------------------------------------------

@dataclass
class Prediction:
    total_ms: float
    per_op: list[dict]
    precision: str
    fmt: str
    seq_len: int
    calibrated: bool

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.per_op:
            out[r["kind"]] = out.get(r["kind"], 0.0) + r["ms"]
        return out


def op_time_s(op: Op, peak_fp32: float, peak_int8: float, bw: float, eff_c: float, eff_m: float,
              overhead_s: float) -> tuple[float, str]:
    """One execution of `op` on the roofline: (seconds, 'compute' | 'memory')."""
    peak = peak_int8 if op.kind == "matmul_int8" else peak_fp32
    tc = op.flops / (peak * eff_c) if op.flops else 0.0
    tm = op.bytes / (bw * eff_m) if op.bytes else 0.0
    return max(tc, tm) + overhead_s, ("compute" if tc >= tm else "memory")


def predict(config: Any, target: Target | str, seq_len: int = 64, precision: str = "float32",
            fmt: str | None = None, calibration: Calibration | None = None, threads: int | None = None) -> Prediction:
    """Predicted latency of one inference of `config` on `target` (calibrated when given one)."""
    t = measured_target(target)
    fmt = fmt or t.runtime["preferred_format"]
    precision = normalize_precision(precision)
    cal = calibration or default_calibration(t, fmt)
    p32, p8, bw = peaks(facts_for(t, calibration, threads), threads)
    rows, total = [], cal.call_overhead_us * 1e-6
    for op in graph_ops(config, seq_len, precision):
        s, bound = op_time_s(op, p32, p8, bw, cal.eff_compute.get(op.kind, DEFAULT_EFF_COMPUTE[op.kind]),
                             cal.eff_mem.get(op.kind, DEFAULT_EFF_MEM[op.kind]), cal.overhead_us * 1e-6)
        ms = s * op.count * 1e3
        total += s * op.count
        rows.append({"name": op.name, "kind": op.kind, "count": op.count, "flops": op.flops * op.count,
                     "bytes": op.bytes * op.count, "ms": ms, "bound": bound})
    return Prediction(total_ms=total * 1e3, per_op=rows, precision=precision, fmt=fmt, seq_len=int(seq_len),
                      calibrated=calibration is not None)


# --- calibration -----------------------------------------------------------------------------

def _design(measurements: list[dict], facts: dict[str, float]):
    """Per observation: arrays of (kind index, flops/peak, bytes/bw, count) for a vectorised fit."""
    obs = []  # (kind_idx, tc_unit, tm_unit, count, measured_s)
    for m in measurements:
        prec = normalize_precision(m.get("precision", "float32"))
        p32, p8, bw = peaks(facts, m.get("threads"))
        ops = graph_ops(m["config"], int(m["seq_len"]), prec)
        groups: list[tuple[list[Op], float, bool]] = []
        if m.get("by_kind"):  # per-op profile rows, summed per kind: one observation per kind
            for kind, ms in m["by_kind"].items():
                sel = [o for o in ops if o.kind == kind]
                if sel and ms > 0:
                    groups.append((sel, ms / 1e3, False))
        if m.get("measured_ms") is not None:  # the whole model, per-call overhead included
            groups.append((ops, float(m["measured_ms"]) / 1e3, True))
        if not groups:
            raise EdgekdError("calibrate: a measurement has neither measured_ms nor by_kind rows")
        for sel, meas, whole in groups:
            k = np.array([KINDS.index(o.kind) for o in sel])
            tc = np.array([o.flops / (p8 if o.kind == "matmul_int8" else p32) for o in sel])
            tm = np.array([o.bytes / bw for o in sel])
            cnt = np.array([o.count for o in sel], dtype=float)
            obs.append((k, tc, tm, cnt, meas, whole))
    return obs


def _predict_obs(theta: np.ndarray, obs) -> np.ndarray:
    nk = len(KINDS)
    ec, em = np.exp(theta[:nk]), np.exp(theta[nk:2 * nk])
    ovh, call = np.exp(theta[2 * nk]) * 1e-6, np.exp(theta[2 * nk + 1]) * 1e-6
    out = np.empty(len(obs))
    for i, (k, tc, tm, cnt, _, whole) in enumerate(obs):
        t = np.maximum(tc / ec[k], tm / em[k]) + ovh
        out[i] = float((t * cnt).sum()) + (call if whole else 0.0)
    return out



def calibrate(measurements: Iterable[dict], target: Target | str, fmt: str | None = None,
              prior: Calibration | None = None, strength: float = 1e-3, iterations: int = 100) -> Calibration:
    """Fit efficiency factors and overheads to measured latencies on `target` (a device).

    Each measurement: {"config": HF config or dict, "seq_len": int, "precision": "float32"|"int8",
    "measured_ms": float (whole model), optional "by_kind": {kind: ms} (per-op profile rows summed by
    kind), optional "threads"}. The fit is least squares on log latency
    (relative error), with a weak pull (`strength`) toward the prior so factors the data cannot see
    (say, the compute efficiency of an op that is always memory-bound) stay at their prior.
    """
    measurements = list(measurements)
    if not measurements:
        raise EdgekdError("calibrate: no measurements given")
    t = measured_target(target)
    fmt = fmt or t.runtime["preferred_format"]
    prior = prior or default_calibration(t, fmt)
    facts = device_facts(t)
    obs = _design(measurements, facts)
    nk = len(KINDS)
    theta0 = np.log(np.array([prior.eff_compute[k] for k in KINDS] + [prior.eff_mem[k] for k in KINDS]
                             + [prior.overhead_us, max(prior.call_overhead_us, 1e-3)]))
    used = np.zeros(len(theta0), bool)  # parameters no observation touches stay at the prior
    for k, tc, tm, *_ in obs:
        used[np.unique(k[tc > 0])] = True
        used[nk + np.unique(k[tm > 0])] = True
    used[2 * nk] = used[2 * nk + 1] = True
    meas = np.array([o[4] for o in obs])
    lam = math.sqrt(strength)

    def resid(th: np.ndarray) -> np.ndarray:
        return np.concatenate([np.log(_predict_obs(th, obs)) - np.log(meas), lam * (th - theta0)])

    theta = levenberg_marquardt(resid, theta0, np.flatnonzero(used), iterations)
    pred = _predict_obs(theta, obs)
    return Calibration(device=t.key, fmt=fmt,
                       eff_compute={k: float(np.exp(theta[i])) for i, k in enumerate(KINDS)},
                       eff_mem={k: float(np.exp(theta[nk + i])) for i, k in enumerate(KINDS)},
                       overhead_us=float(np.exp(theta[2 * nk])), call_overhead_us=float(np.exp(theta[2 * nk + 1])),
                       facts=facts, n_measurements=len(measurements),
                       fit=fit_errors(pred, meas))


def measurement_from_profile(profile: Mapping[str, Any], config: Any, precision: str, seq_len: int | None = None,
                             stat: str = "p50_ms") -> dict:
    """A calibration measurement from an `edgekd.profile.profile_model` result (whole-model latency).

    Its per-op rows are summed per runtime op type (one MatMul row holds both the weight and the
    attention matmuls), which does not separate our kinds, so only the whole-model statistic is used.
    """
    s = seq_len or profile.get("seq_len")
    if not s:
        raise EdgekdError("measurement_from_profile: the profile names no seq_len; pass seq_len=")
    if stat not in profile:
        raise EdgekdError(f"measurement_from_profile: the profile has no {stat!r}")
    config = config if _is_image(config) else arch_of(config)  # an image classifier's config is counted as it is
    return {"config": config, "seq_len": int(s), "precision": normalize_precision(precision),
            "measured_ms": float(profile[stat]), "threads": profile.get("threads")}


# --- the cost-model interface -------------------------------------------------------------------

class LatencyModel(CostModel):
    """One logits forward of a fixed window (`seq_len`), budgeted in ms: the logits job's model."""

    name = "latency"
    calibration_type = Calibration
    precisions = PRECISIONS
    columns = ("predicted_ms", "size_mb", "peak_mem_mb")
    budget_keys = ("latency_ms",)
    budget_options = {"latency_ms": "--latency-budget"}
    length_keys = ("seq_len",)
    shown = (("pred ms", "predicted_ms", "{:.2f}"),)
    plotted = ("predicted_ms", "latency_ms", "predicted latency (ms)")

    def target_format(self, t: Target) -> str:
        return t.runtime["preferred_format"]

    def runtime(self, fmt: str) -> str:
        return runtime_for(fmt)

    def default_calibration(self, t: Target, fmt: Optional[str] = None) -> Calibration:
        return default_calibration(t, fmt)

    def budget(self, t: Target, overrides: Optional[Mapping] = None) -> dict:
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        unknown = set(given) - {"latency_ms", "seq_len"}
        if unknown:
            raise EdgekdError(f"the latency model's budget has no {', '.join(sorted(unknown))}: it is latency_ms "
                              f"(--latency-budget) at a seq_len")
        b = {"latency_ms": float(t.budget["latency_ms"]), "seq_len": 64} | given
        if isinstance(b["latency_ms"], bool) or not b["latency_ms"] > 0:
            raise EdgekdError(f"--latency-budget must be positive, got {b['latency_ms']}")
        return b

    def predict_row(self, config: Mapping, t: Target, precision: str, budget: Mapping, calibration,
                    threads: Optional[int], fmt: str) -> dict:
        pred = predict(config, t, budget["seq_len"], precision, fmt, calibration, threads)
        return {"predicted_ms": round(pred.total_ms, 4), "size_mb": round(model_size_mb(config, precision), 3),
                "peak_mem_mb": round(peak_memory_mb(config, budget["seq_len"], precision, runtime_for(fmt)), 2)}

    def misses(self, numbers: Mapping, budget: Mapping) -> list[str]:
        ms = numbers.get("predicted_ms", numbers.get("p50_ms"))
        return ["latency"] if ms is not None and ms > budget["latency_ms"] else []

    def slack(self, row: Mapping, budget: Mapping) -> float:
        return budget["latency_ms"] / row["predicted_ms"]

    def speed(self, row: Mapping) -> float:
        return -row["predicted_ms"]

    def budget_words(self, budget: Mapping) -> str:
        return f"{budget['latency_ms']:g} ms at {budget['seq_len']} tokens"

    def positions(self, budget: Mapping) -> int:
        return int(budget["seq_len"])

    def miss_words(self, attempt: Mapping, budget: Mapping) -> str:
        return f"{attempt['measured_ms']:.3f} ms > budget {budget['latency_ms']:g} ms"

    def budget_title(self, budget: Mapping, fmt: str) -> str:
        return f"{budget['latency_ms']:g} ms"

    def row_words(self, row: Mapping) -> str:
        return f"predicted at {row['predicted_ms']:.2f} ms"

    def measurement(self, profile: Mapping, config: Any, precision: str, *, seq_len: int,
                    threads: Optional[int]) -> dict:
        return measurement_from_profile(dict(profile) | {"threads": threads}, config, precision, seq_len=seq_len)

    def calibrate(self, measurements: Iterable[dict], t: Target, fmt: str, prior=None) -> Calibration:
        return calibrate(measurements, t, fmt, prior=prior)

    def attempt_numbers(self, search, measured: Optional[Mapping]) -> dict:
        ms = None if measured is None else measured["p50_ms"]
        return {"measured_ms": ms, "misses": [] if ms is None else self.misses({"p50_ms": ms}, search.budget)}

    def search_extras(self, chosen: Mapping, config: Mapping, t: Target, budget: Mapping, calibration,
                      threads: Optional[int], fmt: str) -> dict:
        return {"latency_budget_ms": budget["latency_ms"], "predicted_ms": chosen["predicted_ms"], "generation": None}


LATENCY = register_cost_model(LatencyModel())
