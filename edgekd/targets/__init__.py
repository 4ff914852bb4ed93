"""Edge targets: the target files, the host's measured facts, the latency and generation cost models.

    from edgekd.targets import load_target, measure_target, predict, calibrate, predict_generation

The student search that uses them is edgekd.search (one layer up).
"""

from edgekd.targets.generation import (GenerationCalibration, GenerationPrediction, calibrate_generation,
                                       generation_measurement, predict_generation)
from edgekd.targets.hostbench import measure_target
from edgekd.targets.latency import (Calibration, Prediction, calibrate, calibration_path, default_calibration,
                                    graph_ops, load_calibration, model_size_mb, param_count, peak_memory_mb, predict)
from edgekd.targets.spec import Target, known_targets, list_targets, load_target

__all__ = ["Calibration", "GenerationCalibration", "GenerationPrediction", "Prediction", "Target", "calibrate",
           "calibrate_generation", "calibration_path", "default_calibration", "generation_measurement", "graph_ops",
           "known_targets", "list_targets", "load_calibration", "load_target", "measure_target", "model_size_mb",
           "param_count", "peak_memory_mb", "predict", "predict_generation"]
