"""The distillation engine: `run(DistillConfig) -> RunResult` drives one run; `Trainer` is the loop;
`schemes` say what a run's stages are and where their teacher outputs come from."""

from edgekd.distill.config import DEFAULT_STEPS, DistillConfig
from edgekd.distill.run import RunResult, apply_settings, resolve_out, run
from edgekd.distill import schemes as _schemes  # noqa: F401  (every scheme registered, with its report.md section)

__all__ = ["DistillConfig", "RunResult", "apply_settings", "run", "resolve_out", "DEFAULT_STEPS"]
