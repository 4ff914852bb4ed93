"""The distillation engine: `run(DistillConfig) -> Path` drives a whole job; `Trainer` is the loop."""

from edgekd.distill.run import DEFAULT_STEPS, DistillConfig, run

__all__ = ["DistillConfig", "run", "DEFAULT_STEPS"]
