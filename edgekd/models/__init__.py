"""Teachers (local Hugging Face dirs or the built-in one) and students initialised from them."""

from edgekd.models.loading import load_model, load_teacher
from edgekd.models.students import build_student, default_student_config, select_layers, student_config_from

__all__ = ["load_model", "load_teacher", "build_student", "default_student_config", "select_layers",
           "student_config_from"]
