"""Teachers (local Hugging Face dirs or the built-in one) and students initialised from them.

Imported lazily, so that reading configs (edgekd.models.arch) does not import torch."""

_EXPORTS = {"load_model": "loading", "load_teacher": "loading", "build_student": "students",
            "default_student_config": "students", "select_layers": "students", "student_config_from": "students",
            "arch_of": "arch", "param_count": "arch", "count_params": "students"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"edgekd.models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'edgekd.models' has no attribute {name!r}")
