"""TFLite export through litert-torch and int8 through ai-edge-quantizer recipes on the float file.

PT2E int8 through litert-torch was seen producing files that fail at run time (EMBEDDING_LOOKUP), so
quantisation is applied to the converted float flatbuffer instead, and every result is run in parity.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from edgekd.export.convert_errors import conversion_error
from edgekd.export.onnx_export import as_file_input, quiet


def export_tflite(module: torch.nn.Module, sample: dict[str, torch.Tensor], path: Path) -> dict:
    """Float TFLite at the sample's fixed [1, S] shape; its signature's inputs are named as `sample`'s keys."""
    import litert_torch

    kwargs = {k: v if v.is_floating_point() else v.to(torch.int32) for k, v in sample.items()}
    try:
        with quiet():
            edge = litert_torch.convert(module, (), kwargs)
            edge.export(str(path))
    except Exception as e:
        raise conversion_error(e, "litert-torch", module, tuple(kwargs.values())) from e
    return {"dynamic_seq": False}


def quantize_tflite(float_path: Path, out_path: Path, mode: str, calib_rows: dict[str, np.ndarray] | None) -> dict:
    from ai_edge_quantizer import qtyping, quantizer, recipe

    qt = quantizer.Quantizer(str(float_path))
    with quiet():
        if mode == "int8-full":  # every op static int8, and with it the graph's input and output
            from ai_edge_litert.interpreter import Interpreter

            key = next(iter(Interpreter(model_path=str(float_path)).get_signature_list()))
            n = next(iter(calib_rows.values())).shape[0]
            if not all(np.issubdtype(v.dtype, np.floating) for v in calib_rows.values()):
                from edgekd.errors import EdgekdError

                raise EdgekdError("--quantize int8-full quantises the model's input too, so it takes float inputs "
                                  "(an image classifier's pixels), not token ids: use int8 or int8-dynamic")
            qt.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
            calib = qt.calibrate({key: [{k: v[i:i + 1].astype(np.float32) for k, v in calib_rows.items()}
                                        for i in range(n)]})
            result = qt.quantize(calib, enable_progress_bar=False, enable_progress_report=False)
            info = {"method": "ai-edge-quantizer static int8 on every op (full integer: int8 weights, activations, input "
                              "and output; min-max calibration)", "calib_rows": int(n)}
        elif mode == "int8-dynamic":
            qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            result = qt.quantize(enable_progress_bar=False, enable_progress_report=False)
            info = {"method": "ai-edge-quantizer dynamic_wi8_afp32 (int8 weights, dynamic int8 activations)"}
        else:
            from ai_edge_litert.interpreter import Interpreter

            key = next(iter(Interpreter(model_path=str(float_path)).get_signature_list()))
            n = next(iter(calib_rows.values())).shape[0]
            data = {key: [{k: as_file_input(v[i:i + 1], np.int32) for k, v in calib_rows.items()} for i in range(n)]}
            # Static int8 on every op (static_wi8_ai8) lost top-1 agreement on causal LMs (norms and
            # softmax); quantising the matmuls only, as onnxruntime's QDQ path does, keeps it.
            for op in (qtyping.TFLOperationName.FULLY_CONNECTED, qtyping.TFLOperationName.BATCH_MATMUL,
                       qtyping.TFLOperationName.CONV_2D, qtyping.TFLOperationName.DEPTHWISE_CONV_2D):
                qt.add_static_config(".*", op, activation_num_bits=8, weight_num_bits=8)
            # The layer that writes the logits keeps float activations (int8 weights), as ONNX's QDQ path keeps
            # it float: its int8 output range, calibrated as a moving average of the rows' ranges, clipped a
            # classifier's logits on sentences of other lengths (0.708 -> 0.236).
            for out in Interpreter(model_path=str(float_path)).get_output_details():
                qt.add_dynamic_config(re.escape(out["name"]), qtyping.TFLOperationName.FULLY_CONNECTED, 8)
            calib = qt.calibrate(data)
            result = qt.quantize(calib, enable_progress_bar=False, enable_progress_report=False)
            info = {"method": "ai-edge-quantizer static int8 on FULLY_CONNECTED/BATCH_MATMUL/CONV_2D (int8 weights "
                              "and activations, min-max calibration; the output layer's activations kept float)", "calib_rows": int(n)}
    result.export_model(str(out_path), overwrite=True)
    return info
