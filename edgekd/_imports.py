"""Keep transformers from importing torchao, which edgekd never uses for what transformers wants it for.

transformers imports its torchao quantizer whenever torchao is installed (litert-torch depends on it),
and torchao then prints C++ load failures and torch deprecation warnings on every run. edgekd loads
float checkpoints only, so transformers is told torchao is absent; litert-torch still imports it
itself when a TFLite export needs it. Installed once, from edgekd/__init__.py, before transformers loads.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "transformers.utils.import_utils"


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        if hasattr(module, "is_torchao_available"):
            module.is_torchao_available = lambda *a, **k: False


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    if _TARGET not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
