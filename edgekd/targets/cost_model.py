"""The one cost-model interface: what the student search and the job ask of a model that predicts how
a student runs on a device, and the registry that names them.

A cost model predicts a candidate's numbers on a target (a row of the search's table), says which of
the budget's keys a prediction or a measurement misses, turns a device profile into a calibration
measurement and fits its factors to those measurements. Today two implement it:

- `latency` (cost_latency.py): one logits forward of a fixed window, budgeted in ms (the logits job:
  classifiers, and LMs with --logits); exported as ONNX/TFLite.
- `generation` (cost_generation.py): an LLM generating with a KV cache, budgeted in decode tokens/s
  and time to first token; exported as litert-lm/onnx-genai.

Adding one (an image classifier's, an encoder-decoder's) is a module with a `CostModel` subclass and
one `register_cost_model(...)` call at its end, plus its import in `targets/__init__.py`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterable, Mapping, Optional

from edgekd.errors import EdgekdError
from edgekd.targets.spec import Target

# The candidate table's architecture columns (every cost model's rows have them) and the common tail.
ARCH_COLUMNS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size")
TAIL_COLUMNS = ("fits", "fails", "chosen")
# The constraints every candidate meets, whatever the budget: the target's file size and RAM, the job's
# max_params (a strictly smaller student after a recalibration), training within this machine's memory,
# starting from the teacher's weights.
LIMITS = ("size", "ram", "max_params", "train_memory", "narrowing")


class CostModel(ABC):
    """A device cost model. Stateless: the target, calibration and budget are arguments."""

    name: ClassVar[str]                      # the registry's key; report.json's search.cost_model
    calibration_type: ClassVar[type]         # its calibration dataclass (a fitting.SavedCalibration)
    precisions: ClassVar[tuple[str, ...]]    # what the search tries by default
    runtimes: ClassVar[tuple[str, ...]] = ()  # the formats --runtime may choose instead of the target file's
    columns: ClassVar[tuple[str, ...]]       # the table's columns between precision/params and fits
    budget_keys: ClassVar[tuple[str, ...]]   # the budget's bounds (the lengths they hold at are not bounds)
    budget_options: ClassVar[dict[str, str]]  # bound -> the CLI option that sets it, for messages
    length_keys: ClassVar[tuple[str, ...]]   # the lengths the bounds hold at (tokens)
    shown: ClassVar[tuple[tuple[str, str, str], ...]]  # the console table's numbers: (header, key, format)
    plotted: ClassVar[tuple[str, str, str]]   # search.png's y axis: (row key, budget key, axis label)

    @abstractmethod
    def target_format(self, t: Target) -> str:
        """The export format this model predicts on `t` by default."""

    @abstractmethod
    def runtime(self, fmt: str) -> str:
        """The runtime that runs `fmt`."""

    @abstractmethod
    def default_calibration(self, t: Target, fmt: Optional[str] = None):
        """The priors on `t` for `fmt`, before any measurement."""

    @abstractmethod
    def budget(self, t: Target, overrides: Optional[Mapping] = None) -> dict:
        """The budget on `t`: the target file's with `overrides` (None values ignored) on top, checked."""

    @abstractmethod
    def predict_row(self, config: Mapping, t: Target, precision: str, budget: Mapping, calibration,
                    threads: Optional[int], fmt: str) -> dict:
        """A candidate's predicted numbers: this model's `columns` plus size_mb and peak_mem_mb."""

    @abstractmethod
    def misses(self, numbers: Mapping, budget: Mapping) -> list[str]:
        """The budget keys `numbers` (a row, or a measurement) misses."""

    @abstractmethod
    def speed(self, row: Mapping) -> float:
        """Larger is faster: breaks ties among equals in the search."""

    @abstractmethod
    def budget_words(self, budget: Mapping) -> str:
        """The budget in words, for messages."""

    @abstractmethod
    def positions(self, budget: Mapping) -> int:
        """The positions (tokens) the budget's lengths need of the model."""

    @abstractmethod
    def miss_words(self, attempt: Mapping, budget: Mapping) -> str:
        """An attempt's measured miss in words: '0.512 ms > budget 0.4 ms'."""

    @abstractmethod
    def budget_title(self, budget: Mapping, fmt: str) -> str:
        """The budget as the search's table title states it."""

    @abstractmethod
    def row_words(self, row: Mapping) -> str:
        """A row's predicted numbers in words: 'predicted at 12.3 ms'."""

    @abstractmethod
    def measurement(self, profile: Mapping, config: Any, precision: str, *, seq_len: int,
                    threads: Optional[int]) -> dict:
        """A calibration measurement from a device profile of this model's kind."""

    @abstractmethod
    def calibrate(self, measurements: Iterable[dict], t: Target, fmt: str, prior=None):
        """The calibration fitted to `measurements` on `t`, pulled weakly toward `prior`."""

    @abstractmethod
    def attempt_numbers(self, search, measured: Optional[Mapping]) -> dict:
        """The job's record of one attempt: predicted and measured numbers and the budget keys missed."""

    @abstractmethod
    def search_extras(self, chosen: Mapping, config: Mapping, t: Target, budget: Mapping, calibration,
                      threads: Optional[int], fmt: str) -> dict:
        """What a SearchResult keeps of the chosen row beyond the table: latency_budget_ms, predicted_ms
        and generation (report.json's keys of those names)."""

    def check_calibration(self, calibration) -> None:
        if calibration is not None and not isinstance(calibration, self.calibration_type):
            raise TypeError(f"the {self.name} model takes a {self.calibration_type.__name__} or None, got "
                            f"{type(calibration).__name__}")

    def nothing_fits(self, table: list[dict], target: str, budget: Mapping, max_params: Optional[int],
                     describe) -> EdgekdError:
        """The one line when no candidate fits: the nearest narrowing of the teacher (the smallest worst-case
        shortfall of the budget) with its numbers, i.e. the budget the fastest student would need; the
        largest that meets the budget alone where others limits stop it; the other limits hit."""
        pool = [r for r in table if "narrowing" not in r["fails"].split(",")] or table
        nearest = max(pool, key=lambda r: self.slack(r, budget))
        meets = [r for r in pool if not self.misses(r, budget)]
        why = f"the nearest, {describe(nearest)}, is {self.row_words(nearest)}"
        if meets and max_params is None:
            best = max(meets, key=lambda r: r["params"])
            why += f"; the largest meeting the budget alone ({describe(best)}) fails {best['fails']}"
        other = sorted({f for r in pool for f in r["fails"].split(",") if f in LIMITS and f != "narrowing"})
        limits = f"; also over the {'/'.join(other)} limit for some" if other else ""
        smaller = f" smaller than {max_params:,} parameters" if max_params is not None else ""
        opts = "/".join(self.budget_options[k] for k in self.budget_keys if budget.get(k) is not None)
        return EdgekdError(f"no student{smaller} meets {target}'s budget ({self.budget_words(budget)}): {why}{limits}; "
                           f"relax {opts} or pick a faster target")

    def slack(self, row: Mapping, budget: Mapping) -> float:
        """The worst ratio of a row's numbers to the budget's bounds (>= 1 meets every bound)."""
        return min((self.bound_ratio(k, row[k], budget[k]) for k in self.budget_keys if budget.get(k) is not None),
                   default=math.inf)

    @staticmethod
    def bound_ratio(key: str, value: float, bound: float) -> float:
        """value against bound as a ratio >= 1 when it meets it (a rate: at least; a time: at most)."""
        return value / bound if key.endswith("_s") else bound / value


COST_MODELS: dict[str, CostModel] = {}


def register_cost_model(model: CostModel) -> CostModel:
    """Make `model` known by its name (the search and the job look it up here)."""
    COST_MODELS[model.name] = model
    return model


def get_cost_model(name: "str | CostModel") -> CostModel:
    """The registered cost model `name` (a CostModel passes through)."""
    if isinstance(name, CostModel):
        return name
    try:
        return COST_MODELS[name]
    except KeyError:
        raise EdgekdError(f"unknown cost model {name!r}; known: {', '.join(sorted(COST_MODELS))}") from None
