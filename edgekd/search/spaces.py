"""What the search varies, per kind of teacher: a search space says which students of the teacher's family are
candidates, the columns that describe one, the config a cost model predicts from, its parameters, and whether
the teacher's weights can initialise it. The search (`student.search_student`) is the same for every space.

- `transformer`: every teacher with a layer stack (LMs, sentence classifiers): depth, width (a multiple of the
  head size), heads, key/value heads and FFN size (`student.candidates`).
- `image`: image classifiers (HF ResNet, MobileNetV2, ViT, ConvNeXt; edgekd's CNN): a share of each stage's
  blocks and of its channels in the family's own fields (`models.vision.image_candidates`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from edgekd.models.arch import arch_of, narrowing_problem, param_count
from edgekd.targets.cost_model import ARCH_COLUMNS

IMAGE_COLUMNS = ("depth", "width", "student")  # shares of the teacher's blocks and channels; the family's fields


@dataclass(frozen=True)
class SearchSpace:
    name: str
    columns: tuple                                   # a candidate's architecture columns (candidates.csv)
    headers: tuple                                   # the console table's names for them
    teacher: Callable[[Any], dict]                   # the teacher's config as the space reads it
    candidates: Callable[[Any, tuple], list]         # (teacher config, precisions) -> rows of columns + precision
    config: Callable[[dict, Mapping], dict]          # (teacher, row) -> the student's config dict
    params: Callable[[dict], int]
    narrowing: Callable[[dict, dict], Optional[str]]
    describe: Callable[[Mapping], str]               # one candidate in words, for messages
    shape: Callable[[Mapping], str]                  # a choice's architecture in words, for the report
    label: Callable[[Mapping], str]                  # the choice, short, for the plot
    overrides: Callable[[Mapping], dict]             # a choice (without precision) -> the engine's student fields


def _transformer_config(teacher: dict, row: Mapping) -> dict:
    return {**teacher, **{k: row[k] for k in ARCH_COLUMNS}}


def _transformer_describe(row: Mapping) -> str:
    return (f"{row['num_hidden_layers']} layers, hidden {row['hidden_size']}, {row['num_attention_heads']} heads, "
            f"ffn {row['intermediate_size']}, {row['precision']}, {row['params'] / 1e6:.2f}M params")


def _transformer_candidates(teacher_config: Any, precisions: tuple) -> list[dict]:
    from edgekd.search.student import candidates

    return candidates(teacher_config, precisions)


TRANSFORMER = SearchSpace(
    name="transformer", columns=ARCH_COLUMNS, headers=("layers", "hidden", "heads", "kv", "head dim", "ffn"),
    teacher=arch_of, candidates=_transformer_candidates, config=_transformer_config, params=param_count,
    narrowing=narrowing_problem, describe=_transformer_describe,
    shape=lambda c: (f"{c['num_hidden_layers']} layers, hidden {c['hidden_size']}, {c['num_attention_heads']} heads, "
                     f"FFN {c['intermediate_size']}"),
    label=lambda c: f"{c['num_hidden_layers']}L h{c['hidden_size']} {c['precision']}",
    overrides=lambda choice: {k: v for k, v in choice.items() if k != "precision"})


def _image_teacher(teacher_config: Any) -> dict:
    d = dict(teacher_config) if isinstance(teacher_config, Mapping) else teacher_config.to_dict()
    return {k: v for k, v in d.items() if k not in ("transformers_version", "_name_or_path")}


def _image_candidates(teacher_config: Any, precisions: tuple) -> list[dict]:
    from edgekd.models.vision import image_candidates
    from edgekd.precision import normalize_precision

    precs = list(dict.fromkeys(normalize_precision(p) for p in precisions))
    return [{"depth": c["depth"], "width": c["width"], "student": json.dumps(c["overrides"], sort_keys=True),
             "precision": p} for c in image_candidates(_image_teacher(teacher_config)) for p in precs]


def _image_params(cfg: dict) -> int:
    from edgekd.models.vision import image_param_count

    return image_param_count(cfg)


def _image_narrowing(teacher: dict, cfg: dict) -> Optional[str]:
    from edgekd.models.vision import image_narrowing

    return image_narrowing(teacher, cfg)


def image_fields(row: Mapping) -> str:
    """An image candidate's family fields in words: 'depths [1, 1], hidden_sizes [8, 16]'."""
    return ", ".join(f"{k} {v}" for k, v in json.loads(row["student"]).items())


IMAGE = SearchSpace(
    name="image", columns=IMAGE_COLUMNS, headers=("depth", "width", "student"),
    teacher=_image_teacher, candidates=_image_candidates,
    config=lambda teacher, row: {**teacher, **json.loads(row["student"])}, params=_image_params,
    narrowing=_image_narrowing, shape=image_fields,
    describe=lambda row: (f"{image_fields(row)} ({row['depth']:g} of the blocks, {row['width']:g} of the channels), "
                          f"{row['precision']}, {row['params']:,} params"),
    label=lambda c: f"depth {c['depth']:g}, width {c['width']:g}, {c['precision']}",
    overrides=lambda choice: json.loads(choice["student"]))

SPACES = {s.name: s for s in (TRANSFORMER, IMAGE)}


def space_for(teacher_config: Any) -> SearchSpace:
    """The search space of a teacher: `image` for an image classifier, else `transformer`."""
    from edgekd.models.vision import is_image_classifier

    return IMAGE if is_image_classifier(teacher_config) else TRANSFORMER
