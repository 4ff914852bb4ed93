"""Export students to ONNX and TFLite (float and int8) and prove each file matches PyTorch."""

from edgekd.export.api import export_model

__all__ = ["export_model", "export_and_profile_run"]


def export_and_profile_run(*args, **kwargs):
    from edgekd.export.run_dir import export_and_profile_run as run

    return run(*args, **kwargs)
