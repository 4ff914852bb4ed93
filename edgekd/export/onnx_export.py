"""ONNX export through torch.onnx (dynamo) and int8 through onnxruntime.quantization."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from edgekd.export.convert_errors import conversion_error
from edgekd.models.students import size_mb

PROTOBUF_LIMIT_BYTES = 2 * 1024**3 - 64 * 1024**2


@contextlib.contextmanager
def quiet():
    """Converters chat on stdout and warn freely; a CLI run should show only our progress bar."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _in_dir(path: Path):
    """onnxruntime's quantiser drops scratch files in the working directory; keep them in ours."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def export_onnx(module: torch.nn.Module, sample: dict[str, torch.Tensor], path: Path, max_len: int) -> dict:
    """Float ONNX, inputs named as `sample`'s keys ([1, S] each), with a dynamic sequence axis when the graph
    allows it, else the sample's static shape. `dynamic_seq` is what the written file declares."""
    names = list(sample)
    args = tuple(sample[n] for n in names)
    big = size_mb(module) * 1e6 > PROTOBUF_LIMIT_BYTES
    kw = dict(dynamo=True, input_names=names, output_names=["logits"], verbose=False, external_data=big, optimize=True)
    try:
        if args[0].is_floating_point():  # an image classifier's pixels: a fixed [1, C, H, W], no sequence axis
            raise ValueError("static")
        seq = torch.export.Dim("seq", min=2, max=max(max_len, args[0].shape[1]))
        with quiet():
            torch.onnx.export(module, args, str(path), dynamic_shapes={n: {1: seq} for n in names}, **kw)
        return {"dynamic_seq": _seq_axis_is_dynamic(path)}
    except Exception:
        pass
    try:
        with quiet():
            torch.onnx.export(module, args, str(path), **kw)
    except Exception as e:
        raise conversion_error(e, "torch.onnx (dynamo)", module, args) from e
    return {"dynamic_seq": False}


def _seq_axis_is_dynamic(path: Path) -> bool:
    """Whether the file's first input has a symbolic sequence axis (dynamo specialises a graph whose Python
    loops run once per position, such as the BiLSTM's, without saying so)."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return len(dims) > 1 and not dims[1].HasField("dim_value")


def as_file_input(rows: np.ndarray, ids_dtype) -> np.ndarray:
    """Rows as a file's input: token ids (and masks) in the file's integer type, pixel values float32."""
    return rows.astype(np.float32 if np.issubdtype(rows.dtype, np.floating) else ids_dtype)


class _Batches:
    """CalibrationDataReader over named rows ({input name: [N, S]}), one row per batch of 1."""

    def __init__(self, rows: dict[str, np.ndarray]):
        n = next(iter(rows.values())).shape[0]
        self._it = iter([{k: as_file_input(v[i:i + 1], np.int64) for k, v in rows.items()} for i in range(n)])

    def get_next(self):
        return next(self._it, None)


def quantize_onnx(float_path: Path, out_path: Path, mode: str, calib_rows: dict[str, np.ndarray] | None) -> dict:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    # Absolute paths: the quantiser runs inside its scratch folder, where relative ones do not resolve.
    float_path, out_path = Path(float_path).absolute(), Path(out_path).absolute()
    with tempfile.TemporaryDirectory(dir=out_path.parent) as scratch, _in_dir(Path(scratch)), quiet():
        if mode == "int8-dynamic":
            quantize_dynamic(str(float_path), str(out_path), weight_type=QuantType.QInt8)
            return {"method": "onnxruntime quantize_dynamic (int8 weights, dynamic int8 activations)"}
        reader = type("Reader", (_Batches, CalibrationDataReader), {})(calib_rows)
        head = _output_projection(float_path)
        quantize_static(str(float_path), str(out_path), reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv"], nodes_to_exclude=head)
        return {"method": "onnxruntime quantize_static QDQ on MatMul/Gemm/Conv (per-channel int8 weights, int8 activations, "
                          "min-max calibration; output projection kept float)", "calib_rows": _rows(calib_rows),
                "float_nodes": head}


def _output_projection(path: Path) -> list[str]:
    """The MatMul/Gemm that writes the logits: int8 there flips near-tied top-1 tokens, so it stays float."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and set(n.output) & outputs]


def _rows(feeds: dict[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0])
