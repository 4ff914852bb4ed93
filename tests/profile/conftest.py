"""Small real model files for the runners: an ONNX graph built with onnx.helper and a converted .tflite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

VOCAB, HIDDEN, SEQ = 64, 32, 8


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """Gather -> MatMul -> Relu -> MatMul over int64 token ids with a dynamic sequence axis."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), "emb")
    w1 = numpy_helper.from_array(rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((HIDDEN, VOCAB)).astype(np.float32), "w2")
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h0"]),
             helper.make_node("MatMul", ["h0", "w1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]),
             helper.make_node("MatMul", ["h2", "w2"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seq", VOCAB])],
                              initializer=[emb, w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("profile") / "tiny.onnx"
    onnx.save(model, str(path))
    path.with_name(path.name + ".json").write_text(json.dumps({"seq_len": SEQ, "vocab_size": VOCAB}))
    return path


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, VOCAB)

    def forward(self, ids):
        return self.out(torch.relu(self.emb(ids)))


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory):
    from edgekd.export.tflite_export import export_tflite

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("profile") / "tiny.tflite"
    export_tflite(_Tiny().eval(), torch.zeros(1, SEQ, dtype=torch.long), path)
    return path


@pytest.fixture()
def corrupt_onnx(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07this is not a protobuf model" * 10)
    return path
