"""Messages that say what is true: checkpoints by name, a dataset that is gone, users the filters
dropped, integers too large for int64, standard input and pipes, symbolic-link loops, duplicated
column names, and a resume asked to run fewer epochs than it has done."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cml_dgl.data.dataset import load_dataset
from conftest import assert_one_line_error, run_cli, run_cli_ok, tiny_mf_run

REPO = Path(__file__).resolve().parents[1]
CSV = ["--behaviors", "view,cart,buy", "--negatives", "5", "-q"]


def log_text(users: int = 8, rows: int = 240, buyers_only_once=()) -> str:
    """A small CSV log; the users in ``buyers_only_once`` buy a single item (the default filter,
    min_purchases 2, drops them)."""
    rng = np.random.default_rng(3)
    lines = ["user,item,behavior,timestamp"]
    for n in range(rows):
        u = f"u{n % users}"
        b = ["view", "cart", "buy"][n % 3]
        if u in buyers_only_once and b == "buy":
            b = "view"
        lines.append(f"{u},i{rng.integers(30)},{b},{1000 + n}")
    for u in buyers_only_once:
        lines.append(f"{u},i1,buy,5000")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tiny_mf_run(tmp_path_factory.mktemp("msg"), epochs=3)


def test_checkpoint_prev_and_other_names(trained):
    res = run_cli_ok("evaluate", trained / "run", "--checkpoint", "prev", "--json")
    assert json.loads(res.stdout)["checkpoint"].endswith("checkpoints/prev.pt")
    res = run_cli_ok("evaluate", trained / "run", "--checkpoint", "last.pt", "--json")
    assert json.loads(res.stdout)["checkpoint"].endswith("checkpoints/last.pt")
    err = assert_one_line_error(run_cli("evaluate", trained / "run", "--checkpoint", "epoch7"),
                                "--checkpoint epoch7", "checkpoint not found")
    assert "best, last, prev" in err


def test_a_dataset_that_is_gone_suggests_dataset(trained, tmp_path):
    shutil.copytree(trained / "ds", tmp_path / "ds")
    run_cli_ok("train", tmp_path / "ds", "-o", tmp_path / "run", "--model", "mf", "--epochs", "1",
               "--quiet", "--backend", "torch")
    (tmp_path / "ds").rename(tmp_path / "moved")
    for cmd in (("evaluate",), ("export-embeddings", "-o", tmp_path / "e"), ("recommend", "--user", "100")):
        assert_one_line_error(run_cli(cmd[0], tmp_path / "run", *cmd[1:]), "is gone", "--dataset")
    assert_one_line_error(run_cli("train", "--resume", tmp_path / "run", "--epochs", "2", "--quiet"),
                          "is gone", "DATASET")
    run_cli_ok("evaluate", tmp_path / "run", "--dataset", tmp_path / "moved")


def test_a_user_the_filters_dropped_is_named_so(tmp_path):
    (tmp_path / "log.csv").write_text(log_text(buyers_only_once=("u3",)))
    res = run_cli_ok("preprocess", "csv", tmp_path / "log.csv", "-o", tmp_path / "ds", *CSV)
    assert "the filters dropped 1 of 8 users and 0 of 30 items" in res.stdout, res.stdout
    assert "u3" not in load_dataset(tmp_path / "ds").user_ids
    run_cli_ok("train", tmp_path / "ds", "-o", tmp_path / "run", "--model", "mf", "--epochs", "1",
               "--quiet", "--backend", "torch")
    assert_one_line_error(run_cli("recommend", tmp_path / "run", "--user", "u3"),
                          "user 'u3'", "the preprocessing filters dropped it", "min_purchases=2")
    assert_one_line_error(run_cli("recommend", tmp_path / "run", "--user", "stranger"), "unknown user")
    run_cli_ok("recommend", tmp_path / "run", "--user", "u4")


def test_an_integer_too_large_for_int64_is_called_that(tmp_path):
    text = log_text().replace("u2,", "2,").splitlines()
    text.insert(5, "7,i1,buy,18446744073709551616")
    (tmp_path / "log.csv").write_text("\n".join(text) + "\n")
    assert_one_line_error(run_cli("preprocess", "csv", tmp_path / "log.csv", "-o", tmp_path / "ds", *CSV),
                          "line 6: timestamp '18446744073709551616' is an integer too large for int64")


def _cml(*args, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "cml_dgl_cli", *map(str, args)], env=env, capture_output=True,
                          timeout=300, **kwargs)


def test_standard_input_and_pipes_are_read(tmp_path):
    text = log_text().encode()
    res = _cml("preprocess", "csv", "-", "-o", tmp_path / "a", *CSV, input=text)
    assert res.returncode == 0, res.stderr
    res = _cml("preprocess", "csv", "-", "-o", tmp_path / "b", *CSV, input=gzip.compress(text))
    assert res.returncode == 0, res.stderr
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat > '{fifo}'"], stdin=subprocess.PIPE)
    writer.stdin.write(text)
    writer.stdin.close()
    res = _cml("preprocess", "csv", fifo, "-o", tmp_path / "c", *CSV)
    writer.wait(timeout=60)
    assert res.returncode == 0, res.stderr
    a, b, c = (load_dataset(tmp_path / n) for n in "abc")
    for field in ("train_user", "train_item", "train_behavior", "train_time", "test", "test_negatives"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        np.testing.assert_array_equal(getattr(a, field), getattr(c, field))
    assert a.options["input"] == "-" and a.options["input_bytes"] is None


def test_standard_input_that_cannot_be_read_is_one_line(tmp_path):
    for data, fragment in ((b"", "-: empty input"),
                           (b"PK\x03\x04rest", "a .zip archive cannot be read from a pipe")):
        res = _cml("preprocess", "csv", "-", "-o", tmp_path / "x", *CSV, input=data)
        err = res.stderr.decode().strip()
        assert res.returncode == 2 and err.startswith("error: ") and "\n" not in err, err
        assert fragment in err, err
    res = run_cli("preprocess", "cml-pickle", "-", "-o", tmp_path / "x")
    assert_one_line_error(res, "'-' (standard input) cannot be one")
    assert not (tmp_path / "x").exists()


def test_a_symbolic_link_loop_is_one_line(tmp_path, trained):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    (tmp_path / "log.csv").write_text(log_text())
    assert_one_line_error(run_cli("preprocess", "csv", loop, "-o", tmp_path / "ds", *CSV), "symbolic link loop")
    assert_one_line_error(run_cli("preprocess", "csv", tmp_path / "log.csv", "-o", loop, *CSV),
                          "symbolic link loop")
    assert_one_line_error(run_cli("export-embeddings", trained / "run", "-o", loop / "sub"),
                          "symbolic link loop")


def test_a_duplicated_column_name_is_an_error(tmp_path):
    text = log_text().replace("user,item,behavior,timestamp", "user,item,behavior,timestamp,item", 1)
    text = "\n".join(line + ",x" if k else line for k, line in enumerate(text.splitlines())) + "\n"
    (tmp_path / "log.csv").write_text(text)
    assert_one_line_error(run_cli("preprocess", "csv", tmp_path / "log.csv", "-o", tmp_path / "ds", *CSV),
                          "line 1: column name(s) 'item' appear more than once")


def test_resume_with_fewer_epochs_than_done_says_so(trained, tmp_path):
    shutil.copytree(trained / "run", tmp_path / "run")
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert_one_line_error(run_cli("train", "--resume", tmp_path / "run", "--epochs", "2", "--quiet"),
                          "--epochs 2: the run has already done 3 epochs")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    run_cli_ok("train", "--resume", tmp_path / "run", "--epochs", "4", "--quiet")
