"""--threads N and CML_THREADS (issue 14, point 8): every heavy command takes them and sets torch's
thread count before it works; malformed values are usage errors naming the option or variable."""

import pytest
import torch

from cml_dgl.errors import CmlError
from cml_dgl.threads import ENV, set_threads
from conftest import run_cli

HEAVY = ["train", "evaluate", "export-embeddings", "recommend", "demo", "report"]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("command", HEAVY)
def test_every_heavy_command_documents_threads(command):
    res = run_cli(command, "--help")
    assert res.exit_code == 0
    assert "--threads N" in res.output and "CML_THREADS" in res.output


@pytest.mark.parametrize("how", ["option", "env"])
def test_the_thread_count_is_set_before_the_command_works(tmp_path, monkeypatch, restore_threads, how):
    torch.set_num_threads(2)
    if how == "env":
        monkeypatch.setenv(ENV, "1")
    res = run_cli("evaluate", tmp_path / "no-run", *(["--threads", "1"] if how == "option" else []))
    assert res.exit_code == 2 and "not a run directory" in res.stderr  # the command ran, and refused
    assert torch.get_num_threads() == 1


def test_the_option_wins_over_the_environment(tmp_path, monkeypatch, restore_threads):
    monkeypatch.setenv(ENV, "2")
    run_cli("evaluate", tmp_path / "no-run", "--threads", "1")
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("args, env, fragment", [
    (["--threads", "0"], None, "Invalid value for '--threads'"),
    (["--threads", "many"], None, "Invalid value for '--threads'"),
    ([], "lots", "error: environment variable CML_THREADS='lots': expected a thread count in [1, 1024]"),
    ([], "-3", "CML_THREADS='-3'"),
])
def test_malformed_thread_counts_are_usage_errors(tmp_path, monkeypatch, restore_threads, args, env, fragment):
    if env is not None:
        monkeypatch.setenv(ENV, env)
    res = run_cli("train", tmp_path / "ds", "-o", tmp_path / "run", *args)
    assert res.exit_code == 2 and fragment in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


def test_the_library_reads_the_environment_and_refuses_nonsense(monkeypatch, restore_threads):
    monkeypatch.setenv(ENV, "1")
    assert set_threads() == 1
    assert set_threads(2) == 2
    monkeypatch.setenv(ENV, "1.5")
    with pytest.raises(CmlError, match=r"environment variable CML_THREADS='1.5': expected a thread count"):
        set_threads()
    monkeypatch.setenv(ENV, "")
    assert set_threads() == torch.get_num_threads()
    with pytest.raises(CmlError, match=r"--threads 0: expected a thread count in \[1, 1024\]"):
        set_threads(0)
