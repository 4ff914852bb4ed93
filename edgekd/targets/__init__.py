"""Edge targets: the target files, the host's measured facts, and the cost models that predict how a
student runs on one (one interface, `cost_model.CostModel`; `cost_latency`: one logits forward,
`cost_generation`: an LLM generating).

    from edgekd.targets import load_target, measure_target, get_cost_model
    get_cost_model("generation").predict_row(config, target, "int4", budget, None, None, "litert-lm")

The student search that uses them is edgekd.search (one layer up).
"""

from edgekd.targets import cost_generation, cost_latency
from edgekd.targets.cost_model import COST_MODELS, CostModel, get_cost_model, register_cost_model
from edgekd.targets.fitting import SavedCalibration, calibration_path, load_calibration
from edgekd.targets.hostbench import measure_target
from edgekd.targets.spec import Target, known_targets, list_targets, load_target

__all__ = ["COST_MODELS", "CostModel", "SavedCalibration", "Target", "calibration_path", "cost_generation",
           "cost_latency", "get_cost_model", "known_targets", "list_targets", "load_calibration", "load_target",
           "measure_target", "register_cost_model"]
