"""Edge targets: the target files, the latency cost model and the student search.

    from edgekd.targets import load_target, predict, calibrate, search_student
"""

from edgekd.targets.latency import (Calibration, Prediction, calibrate, calibration_path, graph_ops,
                                    load_calibration, model_size_mb, param_count, peak_memory_mb, predict)
from edgekd.targets.search import SearchResult, search_student
from edgekd.targets.spec import Target, known_targets, list_targets, load_target

__all__ = ["Calibration", "Prediction", "SearchResult", "Target", "calibrate", "calibration_path", "graph_ops",
           "known_targets", "list_targets", "load_calibration", "load_target", "model_size_mb", "param_count",
           "peak_memory_mb", "predict", "search_student"]
