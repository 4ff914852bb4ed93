"""Edge targets: the target files, the host's measured facts and the latency cost model.

    from edgekd.targets import load_target, measure_target, predict, calibrate

The student search that uses them is edgekd.search (one layer up).
"""

from edgekd.targets.hostbench import measure_target
from edgekd.targets.latency import (Calibration, Prediction, calibrate, calibration_path, default_calibration,
                                    graph_ops, load_calibration, model_size_mb, param_count, peak_memory_mb, predict)
from edgekd.targets.spec import Target, known_targets, list_targets, load_target

__all__ = ["Calibration", "Prediction", "Target", "calibrate", "calibration_path", "default_calibration",
           "graph_ops", "known_targets", "list_targets", "load_calibration", "load_target", "measure_target",
           "model_size_mb", "param_count", "peak_memory_mb", "predict"]
