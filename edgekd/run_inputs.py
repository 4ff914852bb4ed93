"""What a distill run is given, checked before anything is loaded or written: every number, the run folder, the
teacher's files, the data path and the student's shape (models/specs.py). Torch-free, like checks.py whose
checks it combines: the CLI runs it before its heavy imports, DistillConfig for the Python API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from edgekd.checks import distill_numbers, json_object, loss_names, model_dir, output_dir
from edgekd.errors import EdgekdError
from edgekd.models.builtin import BUILTIN_DATA, BUILTIN_TEACHERS
from edgekd.models.specs import student_overrides, student_shape


def distill_inputs(values: dict, teacher_config: Optional[dict] = None) -> None:
    """What a distill run is given, checked before anything is loaded or written: every number, the run
    folder, the teacher's files, the data path and the student's shape. `values`: DistillConfig's fields;
    `teacher_config`: the teacher's config.json when known (else read here, except for 'builtin')."""
    distill_numbers(**values)
    output_dir(values.get("out") or Path.cwd() / "runs")
    teacher = values.get("teacher") or "builtin"
    if teacher_config is None and teacher not in BUILTIN_TEACHERS:
        teacher_config = json_object(model_dir(teacher, "--teacher") / "config.json", "model config", "")
        from edgekd.models.loading import check_model_config

        check_model_config(teacher_config, Path(teacher) / "config.json", "teacher")
    data = values.get("data") or "builtin"
    if data not in BUILTIN_DATA and not os.path.lexists(data):
        raise EdgekdError(f"--data {data} does not exist: pass a text file, a folder of .txt files, a .jsonl, "
                          f".csv or .parquet file, a saved data set, 'builtin'; for an image teacher a folder "
                          f"of class folders, an .npz of images and labels, a saved data set or 'builtin-digits'")
    if data not in BUILTIN_DATA:
        from edgekd.limits import data_path

        data_path(data)  # a device node, a FIFO or a file over the limit: refused before the teacher loads

    def own_vocab() -> bool:  # asked only when the vocabularies differ: the loss registry imports torch
        from edgekd.losses import aligns_tokenizers

        return aligns_tokenizers(loss_names(values.get("loss")))

    student_shape(student_overrides(values.get("student")), teacher_config, own_vocab=own_vocab)
