"""The generation cost model: time to first token, prefill and decode tokens/s, peak memory of an LLM
generating on a target, for a Llama-family config (any family `edgekd.models.arch.arch_of` reads).

Why a second model beside `latency.py` (one logits forward): an LLM user budgets generation, whose
two phases sit on opposite sides of the roofline. Batch 1, prompt of P tokens, N generated tokens:

- prefill is compute-bound: FLOPs of P tokens through every weight matmul (the LM head over all P
  positions for onnx-genai, whose graph returns logits for every input position; over the last one
  for litert-lm, whose prefill signature only fills the KV cache) plus causal attention over the
  growing context (4 * heads * head_dim * P(P+1)/2 per layer), against the target's float32 peak
  (float32 weights, and onnx-genai's int4, whose MatMulNBits edgekd builds to multiply float32
  activations) or int8 peak (litert-lm's int8, int4 and onnx-genai's int8: dynamically quantised int8
  activations, as XNNPACK's qd8 kernels and MatMulNBits at accuracy level 4 compute them;
  `formats.ExportFormat.int8_activations`) times
  `eff_prefill[precision]`; max'ed with reading the weights once from memory;
- decode is memory-bound: every step reads all matmul weights at the precision plus one embedding
  row plus the KV cache at the mean context P + N/2, the first `cache_mb` of them from the last-level
  cache at `cache_gbs` and the rest from DRAM at the bandwidth times `eff_mem` (a small model lives
  in the cache: the built-in family's students are 1-20 MB), max'ed with the step's FLOPs at
  `eff_decode_compute[precision]` of the peak (int4 GEMV unpacks nibbles: far below the peak);
- fixed costs: `layer_overhead_us` per layer per forward (the runtime's per-node cost),
  `token_overhead_us` per decode step (sampling, the runtime's step), `call_overhead_ms` per
  generate call (tokens handed in, state set up).

Convention (the profiler's, edgekd/profile/genbench.py): `ttft_ms` is the time from the prompt being
handed in to the first new token chosen = call overhead + prefill + one decode step at context P (the
first token is chosen from the prefill's logits and run through the model); `prefill_tok_s` = P /
prefill time; `decode_tok_s` = 1 / the mean decode step (the tokens after the first).

Weights as the runtimes store them: float32 at 4 B; int8 per output channel (1 B + a float32 scale
per column); int4 blockwise, 0.5 B + a float32 scale per block of 32 (MatMulNBits' default block,
symmetric: no zero points; LiteRT's int4 block-32 recipe). The embedding table: onnx-genai keeps it
float32 (only MatMul nodes are quantised), litert-lm quantises it like the weights but never below
int8. Norms and biases stay float32. The KV cache is float32 on the CPU in both runtimes.

Priors (before calibration) from public measurements:
- decoding 1-8B 4-bit models, runtimes read weights at 50-75 % of the DRAM bandwidth: Llama 3.2 3B
  Q4_K_M (1.9 GB) at 4.5 tok/s on a Raspberry Pi 5 is 8.6 of 17.1 GB/s
  (https://github.com/geerlingguy/ai-benchmarks/issues/7); ExecuTorch's Llama 3.2 1B 4-bit at 50 tok/s
  on a OnePlus 12 about 50 of 68 GB/s (https://github.com/pytorch/executorch/blob/main/examples/models/llama/README.md):
  eff_mem 0.6;
- prefill GEMMs reach 30-60 % of the fp32 FMA peak (XNNPACK, MLAS): eff_prefill float32 0.5;
- int8/int4 prefill: ExecuTorch's Llama 3.2 1B (4-bit weights, 8-bit dynamic activations, KleidiAI)
  prefills 260 tok/s on a OnePlus 12 (Snapdragon 8 Gen 3), about 0.64 int8 TOP/s, i.e. half of the
  SDOT peak the target files state (the i8mm instruction doubles it; packing and activation
  quantisation take the rest) (https://github.com/pytorch/executorch/blob/main/examples/models/llama/README.md):
  eff_prefill int8 0.5, int4 0.45 (the nibbles are unpacked first);
- benchmarks/generation_model_bench.py compares the priors with published numbers (RESULTS.md).
Calibration (`calibrate`) fits the factors to edgekd's own generation profiles.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from edgekd import precision as precision_words
from edgekd.errors import EdgekdError
from edgekd.formats import GENERATIVE, export_format, runtime_of
from edgekd.models.arch import arch_of, param_count
from edgekd.targets.cost_model import CostModel, register_cost_model
from edgekd.targets.fitting import (SavedCalibration, device_facts, facts_for, fit_errors, levenberg_marquardt,
                                    measured_target, peaks)
from edgekd.targets.spec import (GENERATION_BUDGET, GENERATION_LENGTHS, Target, generation_budget_words,
                                 generation_misses)

PRECISIONS = ("float32", "int8", "int4")
INT4_BLOCK = 32
SCALE_BYTES = 4.0
KV_BYTES = 4.0
WEIGHT_BYTES = {"float32": 4.0, "int8": 1.0, "int4": 0.5}
DEFAULT_EFF_PREFILL = {"float32": 0.5, "int8": 0.5, "int4": 0.45}
DEFAULT_EFF_DECODE_COMPUTE = {"float32": 0.25, "int8": 0.2, "int4": 0.2}
DEFAULTS = {  # per format: eff_mem, overheads, the runtime's own resident memory
    "onnx-genai": {"eff_mem": 0.6, "layer_overhead_us": 20.0, "token_overhead_us": 100.0,
                   "call_overhead_ms": 0.2, "init_ms": 50.0, "base_mb": 60.0},
    "litert-lm": {"eff_mem": 0.6, "layer_overhead_us": 10.0, "token_overhead_us": 100.0,
                  "call_overhead_ms": 2.0, "init_ms": 100.0, "base_mb": 40.0},
}
CACHE_MB_UNKNOWN = 0.5  # a target file that states no `memory.cache_mb`: assume (almost) none
CACHE_SPEEDUP = 4.0     # last-level cache against DRAM bandwidth, the prior of cache_gbs
PER_PRECISION = ("eff_prefill", "eff_decode_compute")
SCALARS = ("eff_mem", "layer_overhead_us", "token_overhead_us", "call_overhead_ms", "cache_mb", "cache_gbs")


def normalize_precision(precision: str) -> str:
    return precision_words.normalize_precision(precision, supported=PRECISIONS)


def check_format(fmt: str) -> str:
    """A generative format's name (edgekd.formats), or one line naming the known ones."""
    return export_format(fmt, GENERATIVE).name


def target_format(t: Target) -> str:
    """The target's generative format (`[runtime] generative_format`; onnx-genai for an ONNX target file
    that names none, litert-lm for a TFLite one)."""
    rt = t.runtime
    return check_format(rt.get("generative_format") or ("onnx-genai" if rt["preferred_format"] == "onnx"
                                                       else "litert-lm"))


# --- work: FLOPs and bytes ----------------------------------------------------------------------

def _matmul_bytes(n_weights: float, k: int, precision: str) -> float:
    """Bytes of a k-input weight matrix of n_weights entries as the runtime stores it."""
    if precision == "float32":
        return 4.0 * n_weights
    if precision == "int8":  # per output channel: n / k columns, one scale each
        return n_weights + SCALE_BYTES * n_weights / k
    return 0.5 * n_weights + SCALE_BYTES * n_weights / INT4_BLOCK


@dataclass(frozen=True)
class Work:
    """What one generation costs, independent of the device: FLOPs, bytes, layers."""

    prefill_flops: float
    decode_flops: float        # one step at the mean context P + N/2
    decode_bytes: float        # one step at the mean context
    first_flops: float         # the step that ends TTFT, at context P
    first_bytes: float
    weights_bytes: float       # matmul weights at the precision (read once per forward)
    size_bytes: float          # the file: every weight as stored
    kv_bytes_full: float       # the KV cache at P + N
    act_bytes: float           # the largest live activations (prefill)
    layers: int
    precision: str
    compute: str = "float32"   # the matmuls' arithmetic: "int8" where the runtime quantises activations


def generation_work(config: Any, precision: str = "float32", prompt_len: int = 64, decode_len: int = 128,
                    fmt: str = "onnx-genai") -> Work:
    """FLOPs and bytes of prefilling `prompt_len` tokens and decoding `decode_len`, batch 1."""
    precision, fmt = normalize_precision(precision), check_format(fmt)
    a = arch_of(config)
    P, N = int(prompt_len), int(decode_len)
    h, f, v, L = a["hidden_size"], a["intermediate_size"], a["vocab_size"], a["num_hidden_layers"]
    q, kv = a["num_attention_heads"] * a["head_dim"], a["num_key_value_heads"] * a["head_dim"]
    nffn = 3 if a["gated_mlp"] else 2
    layer_w = 2.0 * h * q + 2.0 * h * kv + nffn * h * f  # q, o; k, v; the MLP
    head_w = float(h * v)
    wbytes = L * (_matmul_bytes(h * q, h, precision) + _matmul_bytes(q * h, q, precision)  # q_proj, o_proj
                  + 2 * _matmul_bytes(h * kv, h, precision)  # k_proj, v_proj
                  + (nffn - 1) * _matmul_bytes(h * f, h, precision) + _matmul_bytes(f * h, f, precision))
    wbytes += _matmul_bytes(head_w, h, precision)
    emb_prec = "float32" if fmt == "onnx-genai" or precision == "float32" else "int8"
    emb_bytes = _matmul_bytes(float(v * h), h, emb_prec)
    other = param_count(a) - L * layer_w - head_w - (0 if a["tie_word_embeddings"] else v * h)
    tied_shared = a["tie_word_embeddings"] and precision == "float32" and emb_prec == "float32"
    size = wbytes + (0.0 if tied_shared else emb_bytes) + 4.0 * max(other, 0.0)
    ctx = P + N / 2.0
    kv_per_tok = 2.0 * L * kv * KV_BYTES
    attn_prefill = L * 4.0 * q * P * (P + 1) / 2.0  # QK^T and PV over the causal context
    logits_rows = P if fmt == "onnx-genai" else 1
    prefill = 2.0 * P * L * layer_w + 2.0 * logits_rows * head_w + attn_prefill
    flops_at = lambda c: 2.0 * (L * layer_w + head_w) + L * 4.0 * q * c  # noqa: E731
    bytes_at = lambda c: wbytes + emb_bytes / v + 4.0 * (2 * L + 1) * h + kv_per_tok * (c + 1) + 4.0 * v  # noqa: E731
    acts = 4.0 * (logits_rows * v + P * (4 * h + 2 * f) + a["num_attention_heads"] * P * P)
    return Work(prefill_flops=prefill, decode_flops=flops_at(ctx), decode_bytes=bytes_at(ctx), first_flops=flops_at(P),
                first_bytes=bytes_at(P), weights_bytes=wbytes,
                size_bytes=size, kv_bytes_full=kv_per_tok * (P + N), act_bytes=acts, layers=L, precision=precision,
                compute="int8" if export_format(fmt).quantises_activations(precision) else "float32")


# --- calibration state ----------------------------------------------------------------------------

@dataclass
class GenerationCalibration(SavedCalibration):
    """Per (device, generative format) factors of the generation model and the facts they were fitted
    against; saved beside the logits model's calibrations (`latency.calibration_path(device, fmt)`)."""

    device: str
    fmt: str
    eff_prefill: dict[str, float]
    eff_decode_compute: dict[str, float]
    eff_mem: float
    cache_mb: float
    cache_gbs: float
    layer_overhead_us: float
    token_overhead_us: float
    call_overhead_ms: float
    init_ms: float
    base_mb: float
    facts: dict[str, float] = field(default_factory=dict)
    n_measurements: int = 0
    fit: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationCalibration":
        """A saved calibration, also one written before the cache term and the per-precision decode
        efficiency (those read as no cache and the one efficiency for every precision)."""
        d = dict(d)
        if isinstance(d.get("eff_decode_compute"), (int, float)):
            d["eff_decode_compute"] = {p: float(d["eff_decode_compute"]) for p in PRECISIONS}
        d.setdefault("cache_mb", CACHE_MB_UNKNOWN)
        d.setdefault("cache_gbs", CACHE_SPEEDUP * float((d.get("facts") or {}).get("bandwidth_gbs", 10.0)))
        return super().from_dict(d)


def default_calibration(target: Target | str, fmt: str | None = None) -> GenerationCalibration:
    """The priors: DEFAULT_EFF_*, DEFAULTS[fmt] and the target's last-level cache; a measured peak (the
    host's GEMM benchmark) is already what a GEMM reaches, so its prefill factors start at 1 less the
    int4 unpacking."""
    t = measured_target(target)
    fmt = check_format(fmt or target_format(t))
    eff = dict(DEFAULT_EFF_PREFILL)
    if "cpu.peak_gflops_fp32" in t.measured:
        eff = {"float32": 1.0, "int8": 1.0, "int4": 0.8}
    return GenerationCalibration(device=t.key, fmt=fmt, eff_prefill=eff, eff_decode_compute=dict(DEFAULT_EFF_DECODE_COMPUTE),
                                 cache_mb=float(t.memory.get("cache_mb", CACHE_MB_UNKNOWN)),
                                 cache_gbs=CACHE_SPEEDUP * float(t.memory["bandwidth_gbs"]), **DEFAULTS[fmt],
                                 facts=device_facts(t))


# --- prediction --------------------------------------------------------------------------------

@dataclass(frozen=True)
class GenerationPrediction:
    device: str
    runtime: str
    format: str
    precision: str
    prompt_len: int
    decode_len: int
    threads: int
    ttft_ms: float
    prefill_tok_s: float
    decode_tok_s: float
    init_ms: float
    peak_rss_mb: float
    size_mb: float
    prefill_ms: float
    decode_ms_per_token: float
    bound: str                 # decode: "memory" or "compute"
    kv_cache_mb: float
    weights_mb: float
    calibrated: bool
    runs: int = 0              # a prediction, not a measurement

    def to_dict(self) -> dict:
        return asdict(self)


def _times(w: Work, P: int, cal: Mapping[str, Any], peaks: tuple[float, float, float]) -> tuple[float, float, float, str]:
    """(prefill s, decode step s, ttft s, decode bound) of `w` under the factors `cal`: the one formula
    that prediction and calibration share."""
    p32, p8, bw = peaks
    peak = p8 if w.compute == "int8" else p32
    cache, cache_bw = cal["cache_mb"] * 1e6, cal["cache_gbs"] * 1e9

    def read(n: float) -> float:  # the first `cache` bytes from the cache, the rest from DRAM
        return min(n, cache) / cache_bw + max(n - cache, 0.0) / (bw * cal["eff_mem"])

    layer_s = w.layers * cal["layer_overhead_us"] * 1e-6
    prefill = max(w.prefill_flops / (peak * cal["eff_prefill"][w.precision]), read(w.weights_bytes)) + layer_s
    fixed = layer_s + cal["token_overhead_us"] * 1e-6
    dc = peak * cal["eff_decode_compute"][w.precision]
    tm, tc = read(w.decode_bytes), w.decode_flops / dc
    first = max(read(w.first_bytes), w.first_flops / dc) + fixed
    ttft = cal["call_overhead_ms"] * 1e-3 + prefill + first
    return prefill, max(tm, tc) + fixed, ttft, ("memory" if tm >= tc else "compute")


def _setup(target: Target | str, fmt: str | None, calibration: GenerationCalibration | None, threads: int | None):
    """The target, format, calibration (the priors when None) and the peaks at `threads`."""
    t = measured_target(target)
    if calibration is not None and not isinstance(calibration, GenerationCalibration):
        raise TypeError(f"calibration must be a GenerationCalibration or None, got {type(calibration).__name__}")
    fmt = check_format(fmt or (calibration.fmt if calibration else target_format(t)))
    cal = calibration or default_calibration(t, fmt)
    return t, fmt, cal, facts_for(t, calibration, threads)


def predict(config: Any, target: Target | str, precision: str = "float32", prompt_len: int = 64,
                       decode_len: int = 128, calibration: GenerationCalibration | None = None,
                       threads: int | None = None, fmt: str | None = None) -> GenerationPrediction:
    """Predicted TTFT, prefill and decode tokens/s, init, peak RSS and size of generating on `target`
    with the target's generative format (or `fmt`, or the calibration's)."""
    P, N = int(prompt_len), int(decode_len)
    if P < 1 or N < 1:
        raise EdgekdError(f"prompt and decode lengths must be at least 1, got prompt_len={P}, decode_len={N}")
    t, fmt, cal, facts = _setup(target, fmt, calibration, threads)
    w = generation_work(config, precision, P, N, fmt)
    prefill, step, ttft, bound = _times(w, P, asdict(cal), peaks(facts, threads))
    weights_mb, kv_mb = w.size_bytes / 1e6, w.kv_bytes_full / 1e6
    init = cal.init_ms + weights_mb / (facts["bandwidth_gbs"] * cal.eff_mem)  # MB / (GB/s) = ms
    used = int(min(float(threads or facts["threads"]), facts["big_cores"]))
    return GenerationPrediction(
        device=t.name, runtime=runtime_of(fmt), format=fmt, precision=w.precision, prompt_len=P, decode_len=N,
        threads=used, ttft_ms=ttft * 1e3, prefill_tok_s=P / prefill, decode_tok_s=1.0 / step, init_ms=init,
        peak_rss_mb=weights_mb + kv_mb + w.act_bytes / 1e6 + cal.base_mb, size_mb=weights_mb,
        prefill_ms=prefill * 1e3, decode_ms_per_token=step * 1e3, bound=bound, kv_cache_mb=kv_mb,
        weights_mb=weights_mb, calibrated=calibration is not None)


# --- calibration -----------------------------------------------------------------------------

def _stat(value: Any, what: str) -> float:
    """A profile number: plain, or the median (else mean) of a {mean, median, ...} object."""
    if isinstance(value, Mapping):
        value = value.get("median", value.get("mean"))
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise EdgekdError(f"generation profile: {what} must be a positive number (or an object with a median "
                          f"or mean), got {value!r}")
    return float(value)


def measurement_from_profile(profile: Mapping[str, Any], config: Any, precision: str) -> dict:
    """A calibration measurement from a generation profile (`edgekd.profile.profile_generation`'s keys:
    prompt_len, decode_len, threads, ttft_ms, decode_tok_s, init_ms, peak_rss_mb, format)."""
    for k in ("prompt_len", "decode_len", "ttft_ms", "decode_tok_s"):
        if k not in profile:
            raise EdgekdError(f"generation profile has no {k!r}: pass a profile_generation result")
    m = {"config": arch_of(config), "precision": normalize_precision(precision),
         "prompt_len": int(profile["prompt_len"]), "decode_len": int(profile["decode_len"]),
         "threads": profile.get("threads"), "fmt": profile.get("format"),
         "ttft_ms": _stat(profile["ttft_ms"], "ttft_ms"), "decode_tok_s": _stat(profile["decode_tok_s"], "decode_tok_s")}
    for k in ("init_ms", "peak_rss_mb"):
        if profile.get(k):
            m[k] = float(profile[k])
    return m


def _pack(cal: GenerationCalibration) -> np.ndarray:
    """The fitted factors in log space: the per-precision ones (PER_PRECISION x PRECISIONS), then SCALARS."""
    return np.log([getattr(cal, k)[p] for k in PER_PRECISION for p in PRECISIONS] + [getattr(cal, k) for k in SCALARS])


def _unpack(theta: np.ndarray) -> dict:
    v = [float(x) for x in np.exp(theta)]
    n = len(PRECISIONS)
    out = {k: dict(zip(PRECISIONS, v[i * n:(i + 1) * n])) for i, k in enumerate(PER_PRECISION)}
    return out | dict(zip(SCALARS, v[len(PER_PRECISION) * n:]))


def calibrate(measurements: Iterable[dict], target: Target | str,
                         prior: GenerationCalibration | None = None, strength: float = 1e-3,
                         iterations: int = 100) -> GenerationCalibration:
    """Fit the generation factors to measured TTFT and decode tokens/s on `target` (least squares on the
    logs, i.e. relative error, with a weak pull `strength` toward the prior so a factor no measurement
    sees, e.g. the int8 prefill efficiency when only float32 was measured, stays at its prior). Init time
    and the runtime's base memory are the median residuals of the measurements that report them."""
    ms = list(measurements)
    if not ms:
        raise EdgekdError("calibrate: no measurements given")
    t = measured_target(target)
    fmt = check_format(prior.fmt if prior else (ms[0].get("fmt") or target_format(t)))
    prior = prior or default_calibration(t, fmt)
    facts = device_facts(t)
    obs = [(generation_work(m["config"], m["precision"], m["prompt_len"], m["decode_len"], fmt),
            int(m["prompt_len"]), peaks(facts, m.get("threads")), m) for m in ms]
    meas = np.log([x for *_, m in obs for x in (m["ttft_ms"] * 1e-3, 1.0 / m["decode_tok_s"])])
    theta0, lam = _pack(prior), math.sqrt(strength)

    def predicted(th: np.ndarray) -> np.ndarray:
        cal = _unpack(th)
        out = []
        for w, P, pk, _ in obs:
            _, step, ttft, _ = _times(w, P, cal, pk)
            out += [ttft, step]
        return np.array(out)

    def resid(th: np.ndarray) -> np.ndarray:
        return np.concatenate([np.log(predicted(th)) - meas, lam * (th - theta0)])

    seen, n = {m["precision"] for m in ms}, len(PRECISIONS)
    free = np.array([i * n + j for i in range(len(PER_PRECISION)) for j, p in enumerate(PRECISIONS) if p in seen]
                    + list(range(len(PER_PRECISION) * n, len(theta0))))
    theta = levenberg_marquardt(resid, theta0, free, iterations)
    fitted = GenerationCalibration(device=t.key, fmt=fmt, **_unpack(theta), init_ms=prior.init_ms,
                                   base_mb=prior.base_mb, facts=facts, n_measurements=len(ms),
                                   fit=fit_errors(predicted(theta), np.exp(meas)))
    return _fit_memory_and_init(fitted, obs, t)


def _fit_memory_and_init(cal: GenerationCalibration, obs, t: Target) -> GenerationCalibration:
    """init_ms and base_mb: the median of (measured - predicted without them) where measured."""
    init_r, base_r = [], []
    for w, P, _, m in obs:
        p = predict(m["config"], t, m["precision"], P, m["decode_len"], cal, m.get("threads"), cal.fmt)
        if m.get("init_ms"):
            init_r.append(m["init_ms"] - (p.init_ms - cal.init_ms))
        if m.get("peak_rss_mb"):
            base_r.append(m["peak_rss_mb"] - (p.peak_rss_mb - cal.base_mb))
    if init_r:
        cal.init_ms = max(float(np.median(init_r)), 0.0)
    if base_r:
        cal.base_mb = max(float(np.median(base_r)), 0.0)
    return cal


def predict_model(model: str | Any, target: Target | str, precision: str, prompt_len: int | None = None,
                  decode_len: int | None = None, settings: Any = None) -> GenerationPrediction:
    """`edgekd predict`: a model directory or config.json on a target by name, the host's facts measured
    (explicitly, as the job does), lengths defaulting to the target's generation budget's (else 64, 128)."""
    from edgekd.models.loading import read_model_config
    from edgekd.targets.hostbench import measure_target
    from edgekd.targets.spec import load_target

    precision = normalize_precision(precision)
    t = measure_target(load_target(target, settings), settings=settings)
    cfg = read_model_config(model)
    from edgekd.models.vision import is_image_classifier

    if is_image_classifier(cfg):
        raise EdgekdError(f"{model} is an image classifier, which does not generate: `edgekd predict` predicts an LLM's "
                          f"decoding; its one-forward latency is `edgekd distill --target` report.json's "
                          f"latency.predicted_ms (edgekd.targets.cost_latency.predict)")
    arch_of(cfg)  # an unsupported or incomplete config: one line now
    b = t.generation_budget or {}
    P = prompt_len if prompt_len is not None else b.get("prompt_len") or 64
    N = decode_len if decode_len is not None else b.get("decode_len") or 128
    return predict(cfg, t, precision, P, N)


# --- the cost-model interface -------------------------------------------------------------------

def generation_budget(t: Target, overrides: Optional[Mapping] = None) -> dict:
    """The generation budget: the target file's `[budget]` keys with `overrides` (None values ignored)
    on top; at least one of decode_tok_s, ttft_ms, with the prompt and decode lengths they hold at."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - {*GENERATION_BUDGET, *GENERATION_LENGTHS}
    if unknown:
        raise EdgekdError(f"unknown generation budget key(s) {', '.join(sorted(unknown))}: use "
                          f"{', '.join((*GENERATION_BUDGET, *GENERATION_LENGTHS))}")
    b = {**(t.generation_budget or {k: None for k in (*GENERATION_BUDGET, *GENERATION_LENGTHS)}), **overrides}
    b["prompt_len"] = 64 if b.get("prompt_len") is None else b["prompt_len"]
    b["decode_len"] = 128 if b.get("decode_len") is None else b["decode_len"]
    if b.get("decode_tok_s") is None and b.get("ttft_ms") is None:
        raise EdgekdError(f"target {t.name} states no generation budget: pass --decode-tok-s and/or --ttft-ms")
    for k, v in b.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise EdgekdError(f"generation budget {k} must be a positive number, got {v!r}")
    return b


class GenerationModel(CostModel):
    """An LLM generating with a KV cache, budgeted in decode tokens/s and TTFT: the generative job's model."""

    name = "generation"
    calibration_type = GenerationCalibration
    precisions = PRECISIONS
    runtimes = ("litert-lm", "onnx-genai")
    columns = ("predicted_ms", "size_mb", "peak_mem_mb", "decode_tok_s", "ttft_ms", "prefill_tok_s")
    budget_keys = GENERATION_BUDGET
    budget_options = {"decode_tok_s": "--decode-tok-s", "ttft_ms": "--ttft-ms"}
    length_keys = GENERATION_LENGTHS
    shown = (("decode tok/s", "decode_tok_s", "{:.0f}"), ("TTFT ms", "ttft_ms", "{:.2f}"))
    plotted = ("decode_tok_s", "decode_tok_s", "predicted decode (tokens/s)")

    def target_format(self, t: Target) -> str:
        return target_format(t)

    def runtime(self, fmt: str) -> str:
        return runtime_of(check_format(fmt))

    def default_calibration(self, t: Target, fmt: Optional[str] = None) -> GenerationCalibration:
        return default_calibration(t, fmt)

    def budget(self, t: Target, overrides: Optional[Mapping] = None) -> dict:
        return generation_budget(t, overrides)

    def predict_row(self, config: Mapping, t: Target, precision: str, budget: Mapping, calibration,
                    threads: Optional[int], fmt: str) -> dict:
        p = predict(config, t, precision, budget["prompt_len"], budget["decode_len"], calibration, threads, fmt)
        return {"predicted_ms": None, "size_mb": round(p.size_mb, 3), "peak_mem_mb": round(p.peak_rss_mb, 2),
                "decode_tok_s": round(p.decode_tok_s, 2), "ttft_ms": round(p.ttft_ms, 4),
                "prefill_tok_s": round(p.prefill_tok_s, 1)}

    def misses(self, numbers: Mapping, budget: Mapping) -> list[str]:
        return generation_misses(dict(numbers), dict(budget))

    def speed(self, row: Mapping) -> float:
        return row["decode_tok_s"]

    def budget_words(self, budget: Mapping) -> str:
        return generation_budget_words(dict(budget))

    def positions(self, budget: Mapping) -> int:
        return int(budget["prompt_len"]) + int(budget["decode_len"])

    def miss_words(self, attempt: Mapping, budget: Mapping) -> str:
        return ", ".join(f"{m} {attempt['measured'][m]:.4g}" for m in attempt["misses"]) + " outside the generation budget"

    def budget_title(self, budget: Mapping, fmt: str) -> str:
        return f"{generation_budget_words(dict(budget))}, {fmt}"

    def row_words(self, row: Mapping) -> str:
        return f"predicted at {row['decode_tok_s']:.1f} tok/s decode and {row['ttft_ms']:.1f} ms TTFT"

    def measurement(self, profile: Mapping, config: Any, precision: str, *, seq_len: int,
                    threads: Optional[int]) -> dict:
        return measurement_from_profile(profile, config, precision)

    def calibrate(self, measurements: Iterable[dict], t: Target, fmt: str, prior=None) -> GenerationCalibration:
        return calibrate(measurements, t, prior=prior or default_calibration(t, fmt))

    def attempt_numbers(self, search, measured: Optional[Mapping]) -> dict:
        pred, b = search.generation["predicted"], search.generation["budget"]
        return {"measured_ms": None, "predicted": {k: pred[k] for k in GENERATION_BUDGET},
                "measured": None if measured is None else {k: measured[k] for k in GENERATION_BUDGET},
                "misses": [] if measured is None else self.misses(measured, b)}

    def search_extras(self, chosen: Mapping, config: Mapping, t: Target, budget: Mapping, calibration,
                      threads: Optional[int], fmt: str) -> dict:
        p = predict(config, t, chosen["precision"], budget["prompt_len"], budget["decode_len"], calibration, threads,
                    fmt)
        return {"latency_budget_ms": float(t.budget["latency_ms"]), "predicted_ms": None,
                "generation": {"budget": dict(budget), "format": fmt, "predicted": p.to_dict()}}


GENERATION = register_cost_model(GenerationModel())
