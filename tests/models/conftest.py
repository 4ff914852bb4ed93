# The tiny teacher and text fixtures are shared with the engine's tests.
from tests.distill.conftest import teacher_dir, text_dir  # noqa: F401
