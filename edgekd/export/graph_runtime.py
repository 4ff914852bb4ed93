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


def size_mb(path: str) -> float:
    """An exported model's size on disk: the file, or every file of a folder (an onnxruntime-genai model)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 1e6
    return os.path.getsize(path) / 1e6
