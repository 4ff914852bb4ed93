"""Precision (what the weights are) and quantisation (the recipe that makes them so): one word each.

`precision` is the latency model's and `--precision`'s word: float32, int8, int4. `quantize` is
export's `--quantize` recipe: none, int8-dynamic, int8 (static, calibrated), int4. A recipe has one
precision (`precision_of`); records that name a file carry both, so nothing has to guess the
precision from a file name. Torch-free: the CLI, the latency model and the search import it.
"""

from __future__ import annotations

from edgekd.errors import EdgekdError

PRECISIONS = ("float32", "int8", "int4")
# int8-full: full-integer int8 (every op, the input and the output int8): what NPUs, the Edge TPU and
# microcontroller runtimes take; TFLite, float-input (image) classifiers.
QUANTIZE = ("none", "int8-dynamic", "int8-full", "int8", "int4")

_PRECISION_OF = {"none": "float32", "int8-dynamic": "int8", "int8-full": "int8", "int8": "int8", "int4": "int4"}
# What users and older records write for each precision (recipes included: a recipe names its precision).
_SPELLINGS = {"float32": "float32", "fp32": "float32", "float": "float32", "none": "float32",
              "int8": "int8", "int8-dynamic": "int8", "int8-full": "int8", "dynamic-int8": "int8", "qint8": "int8",
              "int4": "int4", "qint4": "int4"}


def precision_of(quantize: str) -> str:
    """The weights' precision that the `--quantize` recipe QUANTIZE produces."""
    try:
        return _PRECISION_OF[quantize]
    except KeyError:
        raise EdgekdError(f"unknown quantisation {quantize!r}: use {', '.join(QUANTIZE)}") from None


def normalize_precision(precision: str, supported: tuple[str, ...] = PRECISIONS) -> str:
    """PRECISION as one of `supported` (a user's spelling such as fp32, or a recipe such as int8-dynamic).

    `supported` lets a consumer that models fewer precisions (the latency model: float32 and int8)
    reject the others with the same message.
    """
    p = _SPELLINGS.get(str(precision).lower().replace("_", "-"))
    if p is None or p not in supported:
        raise EdgekdError(f"unknown precision {precision!r}; expected {' or '.join(supported)} "
                          f"(or a --quantize recipe such as int8-dynamic)")
    return p
