"""Export students to ONNX and TFLite (float and int8) and prove each file matches PyTorch."""

from edgekd.export.api import export_model
from edgekd.export.run_dir import VARIANTS, export_key, export_run

__all__ = ["VARIANTS", "export_key", "export_model", "export_run"]
