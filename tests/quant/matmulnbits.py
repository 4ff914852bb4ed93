"""One Linear as onnxruntime's MatMulNBits (block 32, symmetric) at a given bit width and accuracy level: the op
onnx-genai's quantised exports are made of, for tests that compare it with the quantisation-aware Linear."""

from __future__ import annotations

import copy


def matmulnbits_model(linear, rows: int, bits: int, level: int):
    """LINEAR (torch, no bias) as an ONNX MatMulNBits model taking x [rows, in] to y [rows, out]."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    n_out, n_in = linear.weight.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n_out])],
                              [numpy_helper.from_array(linear.weight.detach().T.contiguous().numpy(), "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    q = MatMulNBitsQuantizer(copy.deepcopy(proto), bits=bits, block_size=32, is_symmetric=True, accuracy_level=level)
    q.process()
    return q.model.model


def run_matmulnbits(linear, x, bits: int, level: int):
    """The op's output for x (torch [rows, in]) in onnxruntime here."""
    import onnxruntime as ort

    model = matmulnbits_model(linear, x.shape[0], bits, level)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
