"""Every format edgekd exports to, in one table: what it writes, the runtime that runs it, whether it is a
generative (KV-cache) format, the `--quantize` recipes it takes and so the precisions its weights can have.

Torch-free and below every package: the CLI's checks (`checks.py`), export/, profile/ and the cost models
(targets/) read it, so adding a format is one row here and its converter in export/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgekd.errors import EdgekdError
from edgekd.precision import precision_of

GRAPH = "graph"            # one logits graph per file (onnx, tflite): timed per forward pass
GENERATIVE = "generative"  # a causal LM with its KV cache (litert-lm, onnx-genai): timed per generated token
SEQ2SEQ = "seq2seq"        # an encoder-decoder's graphs (onnx-seq2seq): checked by greedy translation


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str                # the file's suffix (".onnx"), or what a folder's name ends in ("-genai")
    runtime: str               # what runs it on a device, in the cost models' words
    kind: str                  # GRAPH, GENERATIVE or SEQ2SEQ
    quantize: tuple[str, ...]  # the --quantize recipes it takes, "none" first
    folder: bool = False       # written as a folder rather than one file
    # The --quantize recipes whose weights multiply activations the runtime quantises to int8 while it runs
    # (litert-lm: XNNPACK's dynamic int8 rows; onnx-genai int8: MatMulNBits at accuracy_level=4) rather than
    # float32 activations (onnx-genai int4: MatMulNBits at accuracy_level=1, which computes the same numbers on
    # x86 and arm64; at level 4 the arm64 kernels quantise activations their own way and the int4 file generated
    # other tokens on arm64 than on x86: README "Trying the device path"). onnx-genai int8 stays at level 4: at
    # level 1 onnxruntime has no int8 kernel and dequantises every weight each call (69x slower at one token).
    int8_activations: tuple[str, ...] = ()

    def quantises_activations(self, quantize: str) -> bool:
        """Whether the file of recipe (or precision) `quantize` quantises activations to int8 at run time."""
        return quantize in self.int8_activations

    @property
    def generative(self) -> bool:
        return self.kind == GENERATIVE

    @property
    def precisions(self) -> tuple[str, ...]:
        """What its weights can be (float32 first), from its recipes."""
        return tuple(dict.fromkeys(precision_of(q) for q in self.quantize))


# int4 weights exist only in the generative formats; their int8 already quantises activations at run time,
# so they take no int8-dynamic.
FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", ".onnx", "onnxruntime", GRAPH, ("none", "int8-dynamic", "int8")),
    ExportFormat("tflite", ".tflite", "litert", GRAPH, ("none", "int8-dynamic", "int8", "int8-full")),
    ExportFormat("litert-lm", ".litertlm", "litert-lm", GENERATIVE, ("none", "int8", "int4"),
                 int8_activations=("int8", "int4")),
    ExportFormat("onnx-genai", "-genai", "onnxruntime-genai", GENERATIVE, ("none", "int8", "int4"), folder=True,
                 int8_activations=("int8",)),
    ExportFormat("onnx-seq2seq", "", "onnxruntime", SEQ2SEQ, ("none",), folder=True),
)}


def format_names(kind: Optional[str] = None) -> tuple[str, ...]:
    """The formats of `kind` (all of them for None), in the table's order."""
    return tuple(n for n, f in FORMATS.items() if kind is None or f.kind == kind)


def export_format(name: str, kind: Optional[str] = None) -> ExportFormat:
    """The format NAME (of `kind` when given), or one line naming the ones there are."""
    f = FORMATS.get(name)
    if f is None or (kind is not None and f.kind != kind):
        what = "" if kind is None else f"{kind} "
        raise EdgekdError(f"unknown {what}format {name!r}: use {' or '.join(format_names(kind))}")
    return f


def runtime_of(name: str) -> str:
    """The runtime that runs format NAME on a device ("onnx" -> "onnxruntime", "litert-lm" -> "litert-lm")."""
    return export_format(name).runtime
