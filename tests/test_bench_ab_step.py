"""bench/ab_step.py exports each revision's package on its own and refuses what it cannot time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import ab_step  # noqa: E402


def _git(*argv: str) -> str:
    return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def test_a_revision_is_exported_as_its_committed_package(tmp_path):
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tree = ab_step.export("HEAD", tmp_path / "head")
    committed = _git("show", "HEAD:cml_dgl/graph/backends.py")
    assert (tree / "cml_dgl" / "graph" / "backends.py").read_text() == committed + "\n"
    assert (tree / "cml_dgl" / "train" / "presets" / "defaults.yaml").is_file()
    assert not (tree / "tests").exists()  # only the package travels


def test_an_unknown_revision_or_a_single_one_is_refused(tmp_path, monkeypatch, capsys):
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    with pytest.raises(SystemExit, match="not a revision"):
        ab_step.export("no-such-revision-xyz", tmp_path / "x")
    monkeypatch.setattr(sys, "argv", ["ab_step.py", "--revs", "HEAD"])
    with pytest.raises(SystemExit, match="two revisions"):
        ab_step.main()
