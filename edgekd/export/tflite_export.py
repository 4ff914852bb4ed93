"""TFLite export through litert-torch and int8 through ai-edge-quantizer recipes on the float file.

PT2E int8 through litert-torch was seen producing files that fail at run time (EMBEDDING_LOOKUP), so
quantisation is applied to the converted float flatbuffer instead, and every result is run in parity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgekd.export.convert_errors import conversion_error
from edgekd.export.onnx_export import quiet


def export_tflite(module: torch.nn.Module, sample: torch.Tensor, path: Path) -> dict:
    import litert_torch

    sample = sample.to(torch.int32)
    try:
        with quiet():
            edge = litert_torch.convert(module, (sample,))
            edge.export(str(path))
    except Exception as e:
        raise conversion_error(e, "litert-torch", module, (sample,)) from e
    return {"dynamic_seq": False}


def quantize_tflite(float_path: Path, out_path: Path, mode: str, calib_rows: np.ndarray | None) -> dict:
    from ai_edge_quantizer import qtyping, quantizer, recipe

    qt = quantizer.Quantizer(str(float_path))
    with quiet():
        if mode == "int8-dynamic":
            qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            result = qt.quantize(enable_progress_bar=False, enable_progress_report=False)
            info = {"method": "ai-edge-quantizer dynamic_wi8_afp32 (int8 weights, dynamic int8 activations)"}
        else:
            from ai_edge_litert.interpreter import Interpreter

            sigs = Interpreter(model_path=str(float_path)).get_signature_list()
            key = next(iter(sigs))
            name = sigs[key]["inputs"][0]
            data = {key: [{name: calib_rows[i:i + 1].astype(np.int32)} for i in range(calib_rows.shape[0])]}
            # Static int8 on every op (static_wi8_ai8) lost top-1 agreement on causal LMs (norms and
            # softmax); quantising the matmuls only, as onnxruntime's QDQ path does, keeps it.
            for op in (qtyping.TFLOperationName.FULLY_CONNECTED, qtyping.TFLOperationName.BATCH_MATMUL):
                qt.add_static_config(".*", op, activation_num_bits=8, weight_num_bits=8)
            calib = qt.calibrate(data)
            result = qt.quantize(calib, enable_progress_bar=False, enable_progress_report=False)
            info = {"method": "ai-edge-quantizer static int8 on FULLY_CONNECTED/BATCH_MATMUL (int8 weights "
                              "and activations, min-max calibration)", "calib_rows": int(calib_rows.shape[0])}
    result.export_model(str(out_path), overwrite=True)
    return info
