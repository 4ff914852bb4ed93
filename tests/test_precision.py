"""precision.py: one word for the weights (precision), one for the recipe (quantize)."""

import pytest

from edgekd.errors import EdgekdError
from edgekd.precision import PRECISIONS, QUANTIZE, normalize_precision, precision_of


def test_every_recipe_has_a_precision():
    assert {precision_of(q) for q in QUANTIZE} == set(PRECISIONS)
    assert precision_of("none") == "float32"
    assert precision_of("int8-dynamic") == precision_of("int8") == "int8"
    with pytest.raises(EdgekdError, match="quantisation"):
        precision_of("int8_dynamic")


def test_normalize_precision_spellings_and_supported():
    assert normalize_precision("FP32") == normalize_precision("none") == "float32"
    assert normalize_precision("int8_dynamic") == normalize_precision("qint8") == "int8"
    assert normalize_precision("int4") == "int4"
    with pytest.raises(EdgekdError, match="precision 'int4'; expected float32 or int8"):
        normalize_precision("int4", supported=("float32", "int8"))
    with pytest.raises(EdgekdError, match="precision"):
        normalize_precision("bf16")


def test_torch_free():
    import subprocess
    import sys

    code = "import sys, edgekd.precision; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
