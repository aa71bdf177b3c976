"""Small things users notice: file modes follow the umask, the report names users by raw id, long
steps show progress, help text without reST markup, Click's usage errors as one ``error:`` line,
and a huge line refused without reading the whole file."""

import contextlib
import io
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from cml_dgl.data.dataset import write_dataset
from conftest import assert_one_line_error, make_tiny_dataset, run_cli, run_cli_ok


def write_log(path: Path, users: int = 8, rows: int = 240) -> Path:
    rng = np.random.default_rng(1)
    lines = ["user,item,behavior,timestamp"]
    for n in range(rows):
        lines.append(f"u{n % users},i{rng.integers(30)},{['view', 'cart', 'buy'][n % 3]},{1000 + n}")
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_every_written_file_follows_the_umask(tmp_path, mask):
    log = write_log(tmp_path / "log.csv")
    with umask(mask):
        run_cli_ok("preprocess", "csv", log, "--behaviors", "view,cart,buy", "-o", tmp_path / "ds", "-q",
                   "--negatives", "5")
        run_cli_ok("train", tmp_path / "ds", "-o", tmp_path / "run", "--model", "mf", "--epochs", "2",
                   "--quiet", "--backend", "torch")
        run_cli_ok("export-embeddings", tmp_path / "run", "-o", tmp_path / "emb")
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "log.csv"]
    names = {p.name for p in files}
    assert {"meta.json", "config.yaml", "run.json", "summary.json", "last.pt", "manifest.json"} <= names
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, (p, oct(p.stat().st_mode))
    for p in (p for p in tmp_path.rglob("*") if p.is_dir()):
        assert stat.S_IMODE(p.stat().st_mode) == 0o777 & ~mask, p


def test_the_report_labels_sampled_users_by_their_raw_id(tmp_path):
    pytest.importorskip("matplotlib", reason="reports need matplotlib (extra 'report')")
    ds = make_tiny_dataset(n_users=20, n_items=30, seed=5)
    ds.user_ids = np.array([f"shopper-{k * 7}" for k in range(20)])
    write_dataset(ds, tmp_path / "ds")
    run_cli_ok("train", tmp_path / "ds", "-o", tmp_path / "run", "--epochs", "1", "--quiet",
               "--backend", "torch", "--set", "batch_size=32", "--set", "meta_batch=8")
    run_cli_ok("report", tmp_path / "run", "--out", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    table = md[md.index("Sampled users"):]
    assert "| shopper-0 |" in table and "| shopper-133 |" in table, table  # the first and last user
    assert "user 0 " not in md and "#" not in table


def test_preprocessing_steps_after_the_read_show_progress(tmp_path):
    log = write_log(tmp_path / "log.csv")
    loud = run_cli_ok("preprocess", "csv", log, "--behaviors", "view,cart,buy", "-o", tmp_path / "a",
                      "--negatives", "5")
    for step in ("[1/4] dedupe and filter", "[2/4] hold out test/validation", "[3/4] draw negatives",
                 "[4/4] write dataset"):
        assert step in loud.stderr, loud.stderr
    quiet = run_cli_ok("preprocess", "csv", log, "--behaviors", "view,cart,buy", "-o", tmp_path / "b",
                       "--negatives", "5", "-q")
    assert quiet.stderr == ""


def test_full_ranking_evaluation_shows_progress(tmp_path):
    write_dataset(make_tiny_dataset(n_users=20, n_items=30, seed=5), tmp_path / "ds")
    run_cli_ok("train", tmp_path / "ds", "-o", tmp_path / "run", "--model", "mf", "--epochs", "1",
               "--quiet", "--backend", "torch")
    loud = run_cli_ok("evaluate", tmp_path / "run", "--protocol", "full", "--json")
    assert "full ranking" in loud.stderr and "/20" in loud.stderr, loud.stderr
    assert json.loads(loud.stdout)["n_users"] == 20
    assert run_cli_ok("evaluate", tmp_path / "run", "--protocol", "full", "-q").stderr == ""


COMMANDS = ["preprocess", "info", "train", "evaluate", "export-embeddings", "recommend", "report", "demo"]


def test_help_has_no_raw_markup():
    for args in [["--help"]] + [[c, "--help"] for c in COMMANDS]:
        text = run_cli_ok(*args).output
        assert "`" not in text, (args, [line for line in text.splitlines() if "`" in line])


@pytest.mark.parametrize("args, fragments", [  # Click's wording varies a little between versions
    (["train", "--no-such-option"], ["No such option", "--no-such-option"]),
    (["evaluate"], ["Missing argument 'RUN_DIR'"]),
    (["evaluate", "x", "--protocol", "bogus"], ["Invalid value for '--protocol'"]),
    (["preprocess", "nosource", "x", "-o", "y"], ["Invalid value for 'SOURCE'"]),
    (["nosuch-command"], ["No such command"]),
    (["train", "ds", "-o", "r", "--epochs", "many"], ["'many' is not a valid integer"]),
])
def test_usage_errors_are_one_error_line_with_exit_code_2(args, fragments):
    res = run_cli(*args)
    err = assert_one_line_error(res, *fragments)
    assert "Usage:" not in res.stderr and "Usage:" not in res.output, err


def test_a_10_mb_line_is_refused_after_reading_about_one_mebibyte(tmp_path, monkeypatch):
    from cml_dgl.data.sources import tabular

    read = []
    real_read = tabular._read

    def counting(stream, n, path):
        data = real_read(stream, n, path)
        read.append(len(data))
        return data

    monkeypatch.setattr(tabular, "_read", counting)
    for source, header, extra in (("taobao", "", []),
                                  ("csv", "user,item,behavior,timestamp\n", ["--behaviors", "view,buy"])):
        read.clear()
        path = tmp_path / f"{source}.csv"
        path.write_text(header + "1" * 10_000_000)
        res = run_cli("preprocess", source, path, "-o", tmp_path / f"out-{source}", "-q",
                      "--block-bytes", "4096", *extra)
        assert_one_line_error(res, f"line {2 if header else 1}: longer than 1 MiB without a line end")
        assert sum(read) <= tabular.MAX_LINE_BYTES + (1 << 16) + 4096, sum(read)
        assert not (tmp_path / f"out-{source}").exists()

