"""Output folders: ``--overwrite`` replaces only cml's own folder of the same kind (never one holding
the input, the current folder or one above it), and an output that cannot be written is refused
with one line before any input is read."""

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cml_dgl.data.dataset import load_dataset
from cml_dgl.outputs import MARK, folder_kind
from conftest import assert_one_line_error, run_cli, run_cli_ok, tiny_mf_run

BEHAVIORS = ["--behaviors", "view,cart,buy"]


def write_log(path: Path, users: int = 8, rows: int = 240) -> Path:
    rng = np.random.default_rng(0)
    lines = ["user,item,behavior,timestamp"]
    for n in range(rows):
        lines.append(f"u{n % users},i{rng.integers(30)},{['view', 'cart', 'buy'][n % 3]},{1000 + n}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def preprocess(log: Path, out, *extra):
    return run_cli("preprocess", "csv", log, "-o", out, "-q", "--negatives", "5", *BEHAVIORS, *extra)


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` with its size and modification time."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset and a one-epoch MF run on it."""
    return tiny_mf_run(tmp_path_factory.mktemp("trained"), epochs=1)


# ------------------------------------------------------------------ point 1: --overwrite


def test_overwrite_never_deletes_the_folder_that_holds_the_input(tmp_path):
    log = write_log(tmp_path / "mydata" / "events.csv")
    (tmp_path / "mydata" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    res = preprocess(log, tmp_path / "mydata", "--overwrite")
    assert_one_line_error(res, "holds the input")
    assert snapshot(tmp_path) == before


def test_export_into_its_own_run_directory_is_refused(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    before = snapshot(run)
    assert_one_line_error(run_cli("export-embeddings", run, "-o", run, "--overwrite"), "is the input")
    assert snapshot(run) == before and (run / "checkpoints" / "best.pt").is_file()


def test_a_checkpoint_name_is_no_input_path(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli_ok("export-embeddings", trained / "run", "-o", "best", "--checkpoint", "best")
    assert folder_kind(tmp_path / "best") == "export"
    ckpt = tmp_path / "mine.pt"
    shutil.copy(trained / "run" / "checkpoints" / "last.pt", ckpt)
    assert_one_line_error(run_cli("export-embeddings", trained / "run", "-o", ckpt, "--checkpoint", ckpt),
                          "is the input")


@pytest.mark.parametrize("target", [".", "..", "sub/.."])
def test_the_current_folder_and_those_above_it_are_never_outputs(tmp_path, monkeypatch, target):
    work = tmp_path / "a" / "work"
    log = write_log(tmp_path / "log.csv")
    preprocess(log, work)  # the current folder is itself a cml dataset folder
    (work / "sub").mkdir()
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    res = preprocess(log, target, "--overwrite")
    assert_one_line_error(res, "is the current folder or one above it")
    assert snapshot(tmp_path) == before, "no stray ..old-*/ or .tmp-* folder"


def test_overwrite_replaces_only_cmls_own_folder_of_the_same_kind(trained, tmp_path):
    log = write_log(tmp_path / "log.csv")
    res = preprocess(log, tmp_path / "ds")
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "ds" / MARK).read_text())["kind"] == "dataset"
    assert preprocess(log, tmp_path / "ds", "--overwrite").exit_code == 0

    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    before = snapshot(run)
    assert_one_line_error(preprocess(log, run, "--overwrite"), "replaces only a dataset folder",
                          "it is a run directory")
    assert snapshot(run) == before

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    for args in (("preprocess", "csv", log, *BEHAVIORS, "-q"),
                 ("export-embeddings", trained / "run"),
                 ("train", trained / "ds", "--quiet", "--epochs", "1")):
        assert_one_line_error(run_cli(*args, "-o", foreign, "--overwrite"), "cml did not write it")
    assert [p.name for p in foreign.iterdir()] == ["cat.jpg"]


def test_a_stranger_file_in_cmls_own_folder_is_not_deleted(tmp_path):
    log = write_log(tmp_path / "log.csv")
    assert preprocess(log, tmp_path / "ds").exit_code == 0
    for name in ("my-notes.txt", "features.npy"):  # an .npy file too, unless meta.json lists it
        (tmp_path / "ds" / name).write_text("keep")
        assert_one_line_error(preprocess(log, tmp_path / "ds", "--overwrite"), f"holds {name}")
        assert (tmp_path / "ds" / name).read_text() == "keep"
        (tmp_path / "ds" / name).unlink()
    assert preprocess(log, tmp_path / "ds", "--overwrite").exit_code == 0


def test_folders_written_before_the_mark_are_recognised_by_their_structure(trained, tmp_path):
    log = write_log(tmp_path / "log.csv")
    assert preprocess(log, tmp_path / "ds").exit_code == 0
    (tmp_path / "ds" / MARK).unlink()
    assert folder_kind(tmp_path / "ds") == "dataset"
    assert preprocess(log, tmp_path / "ds", "--overwrite", "--seed", "9").exit_code == 0
    assert load_dataset(tmp_path / "ds").seed == 9

    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    (run / MARK).unlink()
    assert folder_kind(run) == "run"
    run_cli_ok("train", trained / "ds", "-o", run, "--model", "mf", "--epochs", "1", "--quiet",
               "--backend", "torch", "--overwrite")
    assert json.loads((run / MARK).read_text())["kind"] == "run"

    # a lookalike: a meta.json that is not cml's
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "meta.json").write_text('{"format": "something else"}')
    assert folder_kind(fake) is None
    assert_one_line_error(preprocess(log, fake, "--overwrite"), "cml did not write it")
    assert (fake / "meta.json").is_file()


def test_train_never_writes_into_its_dataset_and_overwrites_only_runs(trained, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(trained / "ds", ds)
    before = snapshot(ds)
    res = run_cli("train", ds, "-o", ds, "--overwrite", "--quiet", "--epochs", "1")
    assert_one_line_error(res, "is the input")
    res = run_cli("train", ds / "inner", "-o", tmp_path, "--overwrite", "--quiet", "--epochs", "1")
    assert_one_line_error(res, "holds the input")
    assert snapshot(ds) == before
    export = tmp_path / "emb"
    run_cli_ok("export-embeddings", trained / "run", "-o", export)
    assert json.loads((export / MARK).read_text())["kind"] == "export"
    run_cli_ok("export-embeddings", trained / "run", "-o", export, "--overwrite", "--format", "csv")
    (export / "users_mine.csv").write_text("id,e0\n")  # looks like a table, but the manifest does not list it
    assert_one_line_error(run_cli("export-embeddings", trained / "run", "-o", export, "--overwrite"),
                          "holds users_mine.csv")
    (export / "users_mine.csv").unlink()
    assert_one_line_error(run_cli("train", ds, "-o", export, "--overwrite", "--quiet"),
                          "it is an embeddings folder")
    assert (export / "users.csv").is_file()


def test_report_and_demo_write_only_where_they_may(trained, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.md").write_text("my own report")
    (other / "thesis.tex").write_text("x")
    assert_one_line_error(run_cli("report", trained / "run", "--out", other), "--out")
    assert (other / "report.md").read_text() == "my own report"
    res = run_cli("report", trained / "run", "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "rep" / MARK).read_text())["kind"] == "report"
    assert run_cli("report", trained / "run", "--out", tmp_path / "rep").exit_code == 0, "its own folder again"
    assert_one_line_error(run_cli("demo", "--out", other, "--overwrite"), "cml did not write it")
    assert sorted(p.name for p in other.iterdir()) == ["report.md", "thesis.tex"]


# ------------------------------------------------------------------ point 2: checked before the work


def _nothing_read(res, *fragments):
    """The input does not exist: an error about the output proves the output was checked first."""
    err = assert_one_line_error(res, *fragments)
    assert "no such" not in err and "not a run directory" not in err, err
    return err


def test_an_output_that_is_a_file_or_lies_under_one(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    missing = tmp_path / "missing.csv"
    for out in (tmp_path / "f.txt", tmp_path / "f.txt" / "sub" / "deeper"):
        for args in (("preprocess", "csv", missing, *BEHAVIORS, "-o", out),
                     ("train", tmp_path / "nods", "-o", out),
                     ("export-embeddings", tmp_path / "norun", "-o", out)):
            err = _nothing_read(run_cli(*args), "f.txt", "is a file")
            assert "director" not in err, "a file is not called a directory"
    assert (tmp_path / "f.txt").read_text() == "x"


def test_an_output_that_cannot_be_created(tmp_path):
    missing = tmp_path / "missing.csv"
    long_name = tmp_path / ("x" * 300)
    for out, fragment in ((Path("/proc/cml-test/x"), "cannot be created"),
                          (long_name, "a name of 300 bytes"),
                          (tmp_path / ("y" * 256) / "z", "a name of 256 bytes")):
        for args in (("preprocess", "csv", missing, *BEHAVIORS, "-o", out),
                     ("train", tmp_path / "nods", "-o", out),
                     ("export-embeddings", tmp_path / "norun", "-o", out),
                     ("demo", "--out", out)):
            _nothing_read(run_cli(*args), fragment)
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def read_only(folder: Path):
    """A folder nobody can add to: chmod for a normal user; root needs the immutable attribute."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: no folder is read-only to this process")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_folder_is_refused_before_the_input_is_parsed(trained, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    log = write_log(tmp_path / "log.csv")
    with read_only(locked):
        res = preprocess(log, locked / "ds")
        err = assert_one_line_error(res, "cannot be created in", str(locked))
        assert "Traceback" not in err
        _nothing_read(run_cli("train", tmp_path / "nods", "-o", locked / "run"), "cannot be created")
        _nothing_read(run_cli("export-embeddings", trained / "run", "-o", locked / "e"), "cannot be created")
    assert list(locked.iterdir()) == []


def test_no_stub_run_directory_on_a_bad_run_path(trained, tmp_path):
    res = run_cli("train", trained / "ds", "-o", "/proc/cml-run", "--quiet", "--epochs", "1")
    assert_one_line_error(res, "cannot be created")
    assert not Path("/proc/cml-run").exists()


def test_an_empty_existing_folder_is_used_without_overwrite(tmp_path):
    log = write_log(tmp_path / "log.csv")
    (tmp_path / "empty").mkdir()
    assert preprocess(log, tmp_path / "empty").exit_code == 0
    assert folder_kind(tmp_path / "empty") == "dataset"


def test_dot_dot_in_an_output_path(tmp_path, monkeypatch):
    """Found by tests/test_fuzz_cli_paths.py: '-o ds/ds/..' made a stray ds/ds and a traceback;
    '-o ds/../ds --overwrite' moved the dataset aside, then failed to find the path again."""
    log = write_log(tmp_path / "log.csv")
    monkeypatch.chdir(tmp_path)
    assert preprocess(log, "ds").exit_code == 0
    before = snapshot(tmp_path)
    assert_one_line_error(preprocess(log, "ds/ds/..", "--overwrite"), "ends in '..'")
    assert_one_line_error(preprocess(log, "new/../x"), "goes up ('..') from new, which is not a folder")
    assert snapshot(tmp_path) == before
    res = preprocess(log, "ds/../ds/", "--overwrite", "--seed", "5")
    assert res.exit_code == 0, res.stderr
    assert load_dataset(tmp_path / "ds").seed == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "log.csv"], "nothing left aside"
