"""scripts/bootstrap.sh (behind `make test` / `make demo`) refuses an unsupported Python."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def find_python(version: str) -> str | None:
    direct = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python"))
    if direct:
        return str(direct[0])
    found = shutil.which(f"python{version}")
    return found if found and ".pyenv/shims" not in found else None


@pytest.mark.parametrize("version", ["3.13", "3.12"])
def test_wrong_python_is_refused_before_creating_a_venv(tmp_path, version):
    py = find_python(version)
    if py is None:
        pytest.skip(f"no Python {version} on this machine to try")
    venv = tmp_path / "venv"
    res = subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh"), str(venv)], cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": py, "HOME": str(Path.home())},
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert f"Python {version} refused" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not venv.exists()
