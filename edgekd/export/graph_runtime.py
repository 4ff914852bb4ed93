#!/usr/bin/env python3
"""An exported graph file (.onnx, .tflite) opened in the runtime found where it runs: `load(path)` -> a model
with `inputs` and `run(feeds)`, and `make_feeds` shaped like its inputs.

Self-contained on purpose (no torch, no edgekd): export's parity check runs the file here, and the board
timer (profile/board_timer.py) is shipped to boards with this file beside it, where only python3, numpy and
onnxruntime or ai_edge_litert / tflite_runtime can be assumed; so what is timed there is what was checked here.
A problem is a RunnerError whose `kind` the timers turn into their exit code.
"""

from __future__ import annotations

import os

EXIT_NO_RUNTIME = 3
EXIT_BAD_MODEL = 4


class RunnerError(Exception):
    """A problem the caller turns into one line: `kind` is "no-runtime", "bad-model" or "bad-args"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def detect_format(path: str) -> str:
    """TFLite flatbuffers carry "TFL3" at byte 4; anything else must be named .onnx to be tried."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise RunnerError("bad-model", f"cannot read model file {path}: {e.strerror}") from e
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if path.endswith(".onnx"):
        return "onnx"
    if path.endswith(".tflite"):
        raise RunnerError("bad-model", f"{path} is not a TFLite flatbuffer (no TFL3 identifier)")
    raise RunnerError("bad-model", f"{path}: unknown model format (expected .onnx or .tflite)")


def numpy():
    try:
        import numpy as np
    except ImportError as e:
        raise RunnerError("no-runtime", "python3 on the device has no numpy: pip install numpy") from e
    return np


class OnnxModel:
    format = "onnx"

    def __init__(self, path: str, threads: int | None, profile_prefix: str | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RunnerError("no-runtime", "python3 on the device has no onnxruntime: pip install onnxruntime") from e
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        try:
            self.sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise RunnerError("bad-model", f"onnxruntime cannot load {path}: {first_line(e)}") from e
        self.runtime = f"onnxruntime {ort.__version__}"
        np = numpy()
        types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
                 "tensor(bool)": np.bool_, "tensor(float16)": np.float16}
        self.inputs = [(i.name, list(i.shape), types.get(i.type, np.float32)) for i in self.sess.get_inputs()]

    def run(self, feeds: dict) -> list:
        return self.sess.run(None, feeds)


class TfliteModel:
    format = "tflite"

    def __init__(self, path: str, threads: int | None):
        Interpreter, self.runtime = tflite_interpreter()
        try:
            self.it = Interpreter(model_path=path, num_threads=threads)
            self.it.allocate_tensors()
        except Exception as e:
            raise RunnerError("bad-model", f"LiteRT cannot load {path}: {first_line(e)}") from e
        self.in_details = self.it.get_input_details()
        self.out_details = self.it.get_output_details()
        self.inputs = [(d["name"], [int(x) for x in d["shape"]], d["dtype"]) for d in self.in_details]

    def run(self, feeds: dict) -> list:
        np = numpy()
        for d in self.in_details:
            x = feeds[d["name"]]
            scale, zero = d.get("quantization", (0.0, 0))
            if scale and np.issubdtype(x.dtype, np.floating) and np.issubdtype(d["dtype"], np.integer):
                info = np.iinfo(d["dtype"])  # a full-integer model's input: the float values quantised onto its grid
                x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(d["dtype"])
            self.it.set_tensor(d["index"], x)
        self.it.invoke()
        outs = []
        for d in self.out_details:
            y = self.it.get_tensor(d["index"])
            scale, zero = d.get("quantization", (0.0, 0))
            if scale and y.dtype != np.float32:  # full-int8 models hand back quantised logits
                y = (y.astype(np.float32) - zero) * scale
            outs.append(y)
        return outs


def tflite_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter
        import ai_edge_litert

        return Interpreter, f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '')}".strip()
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        import tflite_runtime

        return Interpreter, f"tflite_runtime {getattr(tflite_runtime, '__version__', '')}".strip()
    except ImportError as e:
        raise RunnerError("no-runtime", "python3 on the device has neither ai_edge_litert nor tflite_runtime: "
                          "pip install ai-edge-litert") from e


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def load(path: str, threads: int | None = None, profile_prefix: str | None = None):
    """Open `path` with the runtime its format needs; a broken file is a RunnerError("bad-model")."""
    fmt = detect_format(path)
    if fmt == "onnx":
        return OnnxModel(path, threads, profile_prefix)
    return TfliteModel(path, threads)


def make_feeds(model, seq_len: int, vocab: int | None, seed: int = 0) -> dict:
    """Random token ids (or floats) shaped like the model's inputs, an attention mask all ones; dynamic axes get
    batch 1, seq_len."""
    np = numpy()
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape, dtype in model.inputs:
        dims = [d if isinstance(d, int) and d > 0 else (1 if i == 0 else seq_len) for i, d in enumerate(shape)]
        if np.issubdtype(dtype, np.integer) and "mask" in name:  # a classifier's attention_mask: every token real
            feeds[name] = np.ones(dims, dtype=dtype)
        elif np.issubdtype(dtype, np.integer):
            feeds[name] = rng.integers(0, max(1, vocab or 2), size=dims).astype(dtype)
        else:
            feeds[name] = rng.standard_normal(dims).astype(dtype)
    return feeds


# --- parity: the one comparison of a file's logits with PyTorch's, run here and on boards ------------------

# Top-1 agreement is counted where PyTorch's choice is decisive: its top probability at least this much above the
# runner-up's (export.parity explains the value; generation parity uses the same).
DECISIVE_MARGIN = 0.05


def margin(logits):
    """Per row, the top softmax probability minus the runner-up's."""
    np = numpy()
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top2 = np.sort(p, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def compare_logits(ref: list, got: list, quantized: bool, min_top1: float, labels_must_agree: bool = False) -> dict:
    """Float: max |diff| <= 1e-3 x max |logit| (and, for a classifier, every predicted label the same).
    int8: top-1 agreement >= min_top1 (a classifier's: on the rows where PyTorch's label is decisive). For a
    classifier, top-1 agreement is the share of rows (sentences, images) whose predicted label agrees with PyTorch's."""
    np = numpy()
    r = np.concatenate([x.reshape(-1, x.shape[-1]) for x in ref])
    g = np.concatenate([x.reshape(-1, x.shape[-1]) for x in got]).astype(np.float32)
    if r.shape != g.shape:
        return {"max_abs_diff": None, "mean_abs_diff": None, "top1_agreement": 0.0, "logits_scale": None,
                "threshold": {}, "passed": False, "problem": f"output shape {g.shape} != PyTorch {r.shape}"}
    diff = np.abs(r - g)
    scale = float(np.abs(r).max())
    rec = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
           "top1_agreement": float((r.argmax(-1) == g.argmax(-1)).mean()), "logits_scale": scale,
           "positions": int(r.shape[0])}
    if quantized and labels_must_agree:
        # A classifier's int8 labels are judged where PyTorch's label is decisive, as generation parity judges
        # tokens: between near-tied labels a flip is rounding (an untrained tiny classifier's rows sit within
        # 0.02 of each other), not a broken quantiser, which flips decisive labels too.
        decisive = margin(r) >= DECISIVE_MARGIN
        agree = r.argmax(-1) == g.argmax(-1)
        rec["top1_agreement_decisive"] = float(agree[decisive].mean()) if decisive.any() else None
        rec["decisive_rows"] = int(decisive.sum())
        rec["threshold"] = {"top1_agreement_decisive": min_top1, "decisive_margin": DECISIVE_MARGIN}
        judged = rec["top1_agreement"] if rec["top1_agreement_decisive"] is None else rec["top1_agreement_decisive"]
        rec["passed"] = judged >= min_top1
    elif quantized:
        rec["threshold"] = {"top1_agreement": min_top1}
        rec["passed"] = rec["top1_agreement"] >= min_top1
    else:
        rec["threshold"] = {"max_abs_diff": 1e-3 * scale} | ({"top1_agreement": 1.0} if labels_must_agree else {})
        rec["passed"] = bool(np.isfinite(diff).all()) and rec["max_abs_diff"] <= 1e-3 * scale and \
            (not labels_must_agree or rec["top1_agreement"] == 1.0)
    return rec


def input_of(runtime_name: str, names) -> str:
    """Which of our input names a runtime's input is: ONNX keeps them, TFLite prefixes its signature's
    (serving_default_input_ids:0); a file with one input takes the one we have."""
    names = list(names)
    for n in sorted(names, key=len, reverse=True):
        if runtime_name == n or runtime_name.split(":")[0].endswith(n):
            return n
    if len(names) == 1:
        return names[0]
    raise RunnerError("bad-model", f"the exported file has an input {runtime_name!r} that is none of {', '.join(names)}")


def run_rows(model, feeds: dict) -> list:
    """The file's first output for each row of `feeds` ({our input name: array [N, ...]}), one row at a time as it
    runs on a device, each input cast to the file's own dtype."""
    np = numpy()
    take = [(name, input_of(name, feeds), dtype) for name, _shape, dtype in model.inputs]

    def value(x, dtype):  # float pixels stay float: a full-integer file quantises them onto its grid (TfliteModel.run)
        return x if np.issubdtype(x.dtype, np.floating) and np.issubdtype(dtype, np.integer) else x.astype(dtype)

    n = len(next(iter(feeds.values())))
    return [model.run({name: value(feeds[ours][i:i + 1], dtype) for name, ours, dtype in take})[0] for i in range(n)]


# The device check set beside an export (FILE.parity.npz, written by export.api): the parity rows ("in.NAME"),
# PyTorch's logits of them ("reference") and the bar the file passed here ("quantized", "min_top1", "labels").
CHECK_SUFFIX = ".parity.npz"


def parity_run(model, check_file: str) -> dict:
    """The file's parity on this machine against the check set's PyTorch logits, by the bar it passed where it
    was exported (compare_logits)."""
    np = numpy()
    try:
        with np.load(check_file) as z:
            feeds = {k[3:]: z[k] for k in z.files if k.startswith("in.")}
            ref, quantized = z["reference"], bool(z["quantized"])
            min_top1, labels = float(z["min_top1"]), bool(z["labels"])
    except (OSError, KeyError, ValueError) as e:
        raise RunnerError("bad-args", f"cannot read the parity check set {check_file}: {first_line(e)}") from e
    try:
        got = run_rows(model, feeds)
    except RunnerError:
        raise
    except Exception as e:
        raise RunnerError("bad-model", f"{check_file}: the file fails to run its parity rows: {first_line(e)}") from e
    return compare_logits(list(ref), got, quantized, min_top1, labels) | {"rows": len(ref), "checked": True}


def size_mb(path: str) -> float:
    """An exported model's size on disk: the file, or every file of a folder (an onnxruntime-genai model)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 1e6
    return os.path.getsize(path) / 1e6
