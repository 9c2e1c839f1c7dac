import subprocess
import sys
import zipfile

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_notebooks_and_the_template(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("trainkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for nb in ("01_planning", "02_baseline"):
        assert f"trainkit/notebooks/{nb}.ipynb" in names
    assert "trainkit/configs/baseline_template.yaml" in names
    assert any(n.endswith("entry_points.txt") for n in names)


@pytest.mark.slow
def test_import_trainkit_is_light():
    code = (
        "import sys, trainkit; "
        "print(','.join(m for m in ('torch', 'papermill', 'ipywidgets', 'matplotlib', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"heavy modules imported by `import trainkit`: {out}"
