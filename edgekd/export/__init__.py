"""Export students to ONNX and TFLite (float and int8) and prove each file matches PyTorch; export causal LMs
generatively (litert-lm, onnx-genai; float, int8, int4) and prove they generate as PyTorch does; export
encoder-decoders (onnx-seq2seq) and prove they translate as PyTorch does.

Imported lazily, so that `export.graph_runtime` and `export.generative_runtime` (standalone: the board timers
ship graph_runtime.py) do not import torch."""

_EXPORTS = {"export_model": "api", "export_generative": "generative_export", "export_seq2seq": "seq2seq_export",
            "VARIANTS": "run_dir", "GENERATIVE_VARIANTS": "run_dir", "export_key": "run_dir", "export_run": "run_dir"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"edgekd.export.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'edgekd.export' has no attribute {name!r}")
