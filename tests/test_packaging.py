"""The built wheel: the CLI installs as ``cml_dgl_cli`` (no top-level ``cli``), every package is in it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--disable-pip-version-check", "-q", "-w", str(out), str(REPO)],
                         capture_output=True, text=True, cwd=build, timeout=300)
    if res.returncode != 0 and "No module named" in res.stderr and "setuptools" in res.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert res.returncode == 0, res.stderr[-2000:]
    (path,) = out.glob("cml_dgl-*.whl")
    return zipfile.ZipFile(path)


def test_the_cli_is_packaged_under_a_unique_name(wheel):
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"cml_dgl", "cml_dgl_cli"}, tops
    assert "cml_dgl_cli/main.py" in names and "cml_dgl_cli/__main__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cml = cml_dgl_cli.main:cli" in wheel.read(entry).decode()
    assert "cml_dgl/train/presets/defaults.yaml" in names


def test_every_package_and_module_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    for folder, prefix in ((REPO / "cml_dgl", "cml_dgl"), (REPO / "cli", "cml_dgl_cli")):
        for p in folder.rglob("*.py"):
            if "__pycache__" in p.parts:
                continue
            assert f"{prefix}/{p.relative_to(folder).as_posix()}" in names, p
