"""The one format table: what export writes and what checks and profilers read agree with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekd.errors import EdgekdError
from edgekd.formats import FORMATS, GENERATIVE, GRAPH, export_format, format_names, runtime_of


def test_kinds_precisions_and_runtimes():
    assert format_names(GRAPH) == ("onnx", "tflite") and format_names(GENERATIVE) == ("litert-lm", "onnx-genai")
    assert FORMATS["onnx"].precisions == ("float32", "int8")
    assert FORMATS["litert-lm"].precisions == ("float32", "int8", "int4")
    assert FORMATS["onnx-seq2seq"].precisions == ("float32",)
    assert [runtime_of(f) for f in ("onnx", "tflite", "litert-lm", "onnx-genai")] == \
        ["onnxruntime", "litert", "litert-lm", "onnxruntime-genai"]
    with pytest.raises(EdgekdError, match="unknown generative format 'onnx': use litert-lm or onnx-genai"):
        export_format("onnx", GENERATIVE)


def test_the_job_files_carry_the_table_suffixes():
    """The job's file names (run_dir) and the exporters' default names end as the table says."""
    from edgekd.export.api import default_out
    from edgekd.export.generative_export import default_out as generative_out
    from edgekd.export.run_dir import GENERATIVE_VARIANTS, VARIANTS

    for fmt, _, name in VARIANTS:
        assert Path(name).suffix == FORMATS[fmt].suffix
    for fmt, quant, name in GENERATIVE_VARIANTS:
        assert quant in FORMATS[fmt].quantize
        assert (name.split(".")[0].endswith(FORMATS[fmt].suffix) if FORMATS[fmt].folder else name.endswith(
            FORMATS[fmt].suffix))
    assert default_out(Path("/m/student"), "tflite", "int8").name == "student.int8.tflite"
    assert generative_out(Path("/m/student"), "onnx-genai", "int4").name == "student-genai.int4"
    assert generative_out(Path("/m/student"), "litert-lm", "int4").name == "student.int4.litertlm"
