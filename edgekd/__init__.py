"""edgekd: distill a large teacher into a small student that meets a latency budget on an edge device."""

__version__ = "0.1.0"

from edgekd import _imports  # noqa: E402
from edgekd.errors import EdgekdError  # noqa: E402

_imports.install()

__all__ = ["EdgekdError", "__version__"]
