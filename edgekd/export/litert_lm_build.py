"""The LiteRT-LM builder's child process: `python -m edgekd.export.litert_lm_build MODEL_DIR WORK_DIR JSON`.

litert-torch 0.10's export_hf builds the .litertlm bundle (prefill/decode signatures with a KV cache, the
tokenizer and the metadata the LiteRT-LM runtime reads). Its model registry imports
`tensorflow.lite.python.schema_py_generated` at import time for one model family (bonsai_flux2, an
image generator), yet litert-torch does not declare TensorFlow, and the text-generation path never
reads that module. Installing tensorflow-cpu for it costs ~1.4 GB and ~8 s of import per export, so
where TensorFlow is absent this child registers a placeholder for that one module whose every
attribute access raises: the export cannot silently depend on it (it would fail loudly, naming
tensorflow-cpu), and tests/test_generative_export.py checks that the bundle is byte-identical (all
sections; the header differs only in its creation timestamp) to one built with the real TensorFlow
where that is installed. Run as a child so its output goes to the log and its memory is returned.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types

_SCHEMA = "tensorflow.lite.python.schema_py_generated"


class _Placeholder(types.ModuleType):
    """Stands in for a TensorFlow module that the text-generation export imports and never reads."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(f"this export reads {self.__name__}.{name} from TensorFlow: pip install tensorflow-cpu")


def install_tf_placeholder(force: bool = False) -> bool:
    """Register the placeholder (and its parent packages) unless TensorFlow is installed; True if it did."""
    if not force and importlib.util.find_spec("tensorflow") is not None:
        return False
    parts = _SCHEMA.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        module = _Placeholder(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=i < len(parts))
        if i < len(parts):
            module.__path__ = []
        sys.modules[name] = module
        if i > 1:
            object.__setattr__(sys.modules[".".join(parts[:i - 1])], parts[i - 1], module)
    return True


def main(argv: list[str]) -> int:
    model_dir, work_dir, options = argv[0], argv[1], json.loads(argv[2])
    placeholder = install_tf_placeholder(force=bool(options.pop("force_tf_placeholder", False)))
    print(f"edgekd: TensorFlow {'placeholder' if placeholder else 'installed'}", flush=True)
    from litert_torch.generative.export_hf import export as export_hf

    export_hf.export(model_dir, work_dir, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
