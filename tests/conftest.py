import os

import pytest

os.environ.setdefault("TRAINKIT_PROGRESS", "off")


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    return d
