"""The seeds' Python API: a Keras-`Distiller`-style object over edgekd's engine.

    from edgekd.distiller import Distiller
    d = Distiller(teacher="builtin-cnn", student="cnn", temperature=4.0, alpha=0.7, loss="kd")
    result = d.fit(data="builtin-digits", steps=400, batch_size=32, lr=1e-2)
    d.scores()          # {"teacher": {...accuracy...}, "student": {...}, "ce_only": {...}, "scratch": {...}}
    d.student           # the trained student (a transformers PreTrainedModel), loaded from RUN/student

`fit` is `edgekd distill` without --target: the same DistillConfig, trainer, losses registry (`loss` is any
loss spec the CLI's --loss takes), baselines and run directory; nothing here trains by itself.
"""

from __future__ import annotations

from typing import Any, Optional

from edgekd.hyperparams import DEFAULT_ALPHA, DEFAULT_TEMPERATURE


class Distiller:
    """Teacher and student (a model directory or a built-in name; the student also a --student spec such as
    'cnn', 'bilstm' or a dict of config fields; None: the teacher's default student), the temperature, the
    weight α of the distillation term, and the loss."""

    def __init__(self, teacher: str, student: Any = None, *, temperature: float | str = DEFAULT_TEMPERATURE,
                 alpha: float = DEFAULT_ALPHA, loss: Any = None):
        self.teacher, self.student_spec = str(teacher), student
        self.temperature, self.alpha, self.loss = temperature, alpha, loss
        self.result = None
        self._student = None

    def fit(self, data: str = "builtin", steps: Optional[int] = None, out: Optional[str] = None, **options):
        """Distil on `data` for `steps` (DistillConfig's other fields as keywords: batch_size, lr, seed, ...);
        returns the engine's RunResult (its `out` is the run directory, `report` its report.json)."""
        from edgekd.distill import DistillConfig, run

        cfg = DistillConfig(teacher=self.teacher, student=self.student_spec, data=str(data), steps=steps, out=out,
                            temperature=self.temperature, alpha=self.alpha, loss=self.loss, **options)
        self.result, self._student = run(cfg), None
        return self.result

    def scores(self) -> dict:
        """The held-out numbers of the teacher, the student and the baselines, as report.json holds them."""
        if self.result is None:
            raise RuntimeError("call fit() first")
        return {k: v for k, v in self.result.report.items() if k in ("teacher", "student", "ce_only", "scratch")}

    @property
    def student(self):
        """The trained student, loaded from the run directory."""
        if self.result is None:
            raise RuntimeError("call fit() first")
        if self._student is None:
            from edgekd.models.loading import load_model

            self._student = load_model(self.result.out / "student", with_tokenizer=False, what="student")[0]
        return self._student
