"""Every third-party exporter the main job runs imports in this environment.

The contract (issue 24, item 7): the ranges in pyproject.toml install a working set. transformers 5.25
broke litert-torch 0.10's HF export path at import time ("Function apply_rotary_pos_emb is not decorated
with @use_kernel_forward_from_hub"), and onnxruntime-genai's builder imports transformers too, so an
environment made the README's way (`pip install torch==2.13.0 && pip install .`) could not export.
CI's drift step runs this file in the environment of the newest versions the ranges allow and fails
the submission when it fails (.ci/run). Each module is imported in its own interpreter, the way
edgekd's builders run (a child process each), so one module's half-finished import cannot hide or
cause another's failure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The modules edgekd's exporters import, by the export that needs them.
EXPORTER_MODULES = {
    "litert-lm (litert-torch's HF export path)": "litert_torch.generative.export_hf.export",
    "litert-lm bundle header": "litert_lm_builder.litertlm_header_schema_py_generated",
    "litert-lm runtime": "litert_lm",
    "onnx-genai (onnxruntime-genai's model builder)": "onnxruntime_genai.models.builder",
    "tflite (litert-torch)": "litert_torch",
    "tflite int8 (ai-edge-quantizer)": "ai_edge_quantizer.quantizer",
    "tflite runtime": "ai_edge_litert.interpreter",
    "onnx int8 (onnxruntime.quantization)": "onnxruntime.quantization",
}

# The litert-lm builder's child registers its TensorFlow placeholder before importing litert-torch.
IMPORT = ("import importlib, sys\n"
          "from edgekd.export.litert_lm_build import install_tf_placeholder\n"
          "install_tf_placeholder()\n"
          "importlib.import_module(sys.argv[1])\n")


@pytest.mark.parametrize("module", list(EXPORTER_MODULES.values()), ids=list(EXPORTER_MODULES))
def test_exporter_imports(module):
    res = subprocess.run([sys.executable, "-c", IMPORT, module], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
    assert res.returncode == 0, f"import {module} fails with the installed versions: {last}"
