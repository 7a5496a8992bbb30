"""Packaging: the built wheel says what the project is (license, version, Python range, extras)
and carries LICENSE and py.typed; an unsupported Python is refused clearly at ``spmd`` time."""
from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import spmdbatch as sb
from spmdbatch.errors import SpmdError, UnsupportedPythonVersion

ROOT = Path(__file__).resolve().parents[1]


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_file_is_the_mit_license_pyproject_names():
    assert pyproject()["project"]["license"] == "MIT"
    assert pyproject()["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


def test_version_is_written_in_one_place():
    project = pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "spmdbatch.__version__"}


def test_python_range_and_gpu_extras():
    project = pyproject()["project"]
    assert project["requires-python"] == ">=3.11,<3.14"
    extras = project["optional-dependencies"]
    assert extras["gpu-cuda12"] == ["cupy-cuda12x>=13"]
    assert extras["gpu-cuda13"] == ["cupy-cuda13x>=13"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a copy of the sources (so no build files land in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "spmdbatch", src / "spmdbatch",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1:]}")
    (path,) = out.glob("spmdbatch-*.whl")
    return path


def test_the_wheel_metadata_and_files(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_string(zf.read(meta_name).decode())
    assert meta["Version"] == sb.__version__
    assert meta["License-Expression"] == "MIT"
    assert set(meta["Requires-Python"].split(",")) == {">=3.11", "<3.14"}
    assert {"gpu-cuda12", "gpu-cuda13"} <= set(meta.get_all("Provides-Extra"))
    requires = meta.get_all("Requires-Dist")
    assert 'cupy-cuda12x>=13; extra == "gpu-cuda12"' in requires
    assert 'cupy-cuda13x>=13; extra == "gpu-cuda13"' in requires
    assert "spmdbatch/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def per_example(x):
    if x > 0:
        return x
    return -x


def test_an_unsupported_python_is_a_clear_spmd_error(monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 14, 0, "final", 0))
    with pytest.raises(UnsupportedPythonVersion) as err:
        sb.spmd(per_example)
    monkeypatch.undo()
    assert isinstance(err.value, SpmdError)
    line = per_example.__code__.co_firstlineno
    message = str(err.value)
    assert f"{__file__}:{line}:" in message
    assert "3.11 to 3.13" in message and "Python 3.14" in message
