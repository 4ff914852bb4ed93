import pytest

from tests.distill.helpers import tiny_teacher, write_text_dir


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("teacher") / "t")


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory):
    return write_text_dir(tmp_path_factory.mktemp("data") / "d")
