"""Kill and resume: SIGKILL at exact moments (bench/kill_resume.py), corrupt and missing checkpoints,
stale temporary files, and checkpoints whose bytes were flipped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cml_dgl_cli.main import cli
from cml_dgl.data.dataset import load_dataset, write_dataset
from cml_dgl.errors import CmlError
from cml_dgl.train import config as config_mod
from cml_dgl.train import faults
from cml_dgl.train.checkpoint import load_checkpoint, save_checkpoint
from cml_dgl.train.trainer import Trainer
from conftest import make_tiny_dataset
from conftest import metrics_rows as metrics

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--backend", "torch", "--set", "n_layers=1"]
FAST = [*SMALL, "--set", "batch_size=32", "--set", "meta_batch=8", "--set", "meta_samples=4", "--quiet"]


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "ds"
    write_dataset(make_tiny_dataset(n_users=16, n_items=30, seed=3), d)
    return d


@pytest.fixture(scope="module")
def reference(ds_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    res = CliRunner().invoke(cli, ["train", str(ds_dir), "-o", str(run), "--epochs", "3", *FAST])
    assert res.exit_code == 0, res.output
    return run


def same_best(a, b):
    sa, _ = load_checkpoint(a / "checkpoints" / "best.pt")
    sb, _ = load_checkpoint(b / "checkpoints" / "best.pt")
    return all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


def resume(run, *extra):
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2
        runner = CliRunner()
    return runner.invoke(cli, ["train", "--resume", str(run), "--quiet", *extra])


def test_sigkill_during_epoch_checkpoint_and_evaluation_then_resume_equals_clean_run(ds_dir, tmp_path):
    res = subprocess.run(
        [sys.executable, str(REPO / "bench" / "kill_resume.py"), "--dataset", str(ds_dir), "--epochs", "4",
         "--seed", "6", "--corrupt-last", "--workdir", str(tmp_path), *SMALL],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"))  # tiny models: one thread is faster on shared cores
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["kills_survived"] == 3
    assert sorted(k["phase"] for k in report["kills"]) == ["ckpt", "eval", "train"]
    assert all(k["killed"] for k in report["kills"])
    assert report["metrics_equal"] and report["summary_equal"] and report["best_equal"]
    assert report["temporary_files_left"] == []
    assert report["corrupt_last"] == {"applied": True, "reported": True}
    # the kill inside the checkpoint write left the complete temporary file unrenamed: the next
    # resume removed it (and resumed from the epoch before)
    after_ckpt = report["kills"][[k["phase"] for k in report["kills"]].index("ckpt") + 1]
    assert any("interrupted write" in w for w in after_ckpt["warnings"])
    assert not any(w.startswith(("error:", "Traceback")) for k in report["kills"] for w in k["warnings"])
    rows = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4], "no epoch line is duplicated or lost"


def test_corrupt_last_checkpoint_falls_back_to_prev_and_finishes_identically(ds_dir, reference, tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", str(ds_dir), "-o", str(run), "--epochs", "3", *FAST])
    assert res.exit_code == 0, res.output
    last = run / "checkpoints" / "last.pt"
    raw = bytearray(last.read_bytes())
    for pos in range(len(raw) // 3, len(raw) // 3 + 64):
        raw[pos] ^= 0xA5
    last.write_bytes(bytes(raw))
    res = resume(run)
    assert res.exit_code == 0, res.output
    assert "last.pt" in res.stderr and "resuming from" in res.stderr and "prev.pt" in res.stderr
    assert metrics(run) == metrics(reference)
    assert same_best(run, reference)
    assert (run / "checkpoints" / "last.corrupt.pt").is_file(), "the corrupt file is kept aside"
    assert load_checkpoint(run / "checkpoints" / "prev.pt")[1]["epoch"] == 2, \
        "the corrupt file was not rotated into prev.pt"


def test_no_usable_checkpoint_is_a_clear_error(ds_dir, tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", str(ds_dir), "-o", str(run), "--epochs", "2", *FAST])
    assert res.exit_code == 0, res.output
    for name in ("last.pt", "prev.pt"):
        p = run / "checkpoints" / name
        p.write_bytes(p.read_bytes()[:100])
    res = resume(run)
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "no usable checkpoint" in err
    assert "Traceback" not in res.output + res.stderr


def test_run_killed_before_its_first_checkpoint_restarts_cleanly(ds_dir, reference, tmp_path):
    """A run directory with config and run.json, a torn metrics line and stale temporary files."""
    run = tmp_path / "run"
    cfg = config_mod.resolve(overrides=["epochs=3", "backend=torch", "n_layers=1", "batch_size=32",
                                        "meta_batch=8", "meta_samples=4"])
    Trainer(load_dataset(ds_dir), cfg, run, quiet=True).prepare_run_dir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "losses": {"bp')
    (run / "checkpoints").mkdir()
    stale = [run / "checkpoints" / ".last.pt.tmp-abc123", run / ".summary.json.tmp-x1"]
    for p in stale:
        p.write_bytes(b"half a file")
    res = resume(run)
    assert res.exit_code == 0, res.output
    assert "no checkpoint yet" in res.stderr and "interrupted write" in res.stderr
    assert not any(p.exists() for p in stale)
    assert metrics(run) == metrics(reference)
    assert same_best(run, reference)


def test_fault_hook_pauses_only_at_its_phase_and_epoch(tmp_path, monkeypatch):
    marker = tmp_path / "m"
    monkeypatch.setenv(faults.ENV_MARKER, str(marker))
    monkeypatch.setenv(faults.ENV_SLEEP, "0")
    monkeypatch.setenv(faults.ENV_PAUSE, "eval:3")
    faults.pause_point("eval", 2)
    faults.pause_point("train", 3)
    assert not marker.exists()
    faults.pause_point("eval", 3)
    assert marker.read_text() == "eval:3\n"
    for bad in ("eval", "save:3", "eval:x"):
        with pytest.raises(ValueError):
            faults.parse(bad)
    # inside save_checkpoint the pause comes after the file is complete and before the rename
    marker.unlink()
    monkeypatch.setenv(faults.ENV_PAUSE, "ckpt:5")
    seen = []

    def rotate():
        seen.append(sorted(p.name for p in tmp_path.iterdir()))

    save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(3)}, {"epoch": 5}, before_rename=rotate)
    assert marker.read_text() == "ckpt:5\n"
    assert len(seen) == 1 and "c.pt" not in seen[0] and any(n.startswith(".c.pt.tmp-") for n in seen[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "m"]


def test_every_flipped_or_truncated_checkpoint_byte_is_refused_or_harmless(tmp_path):
    """torch does not check the zip CRCs: the state and the info (epoch, RNG states) carry their own
    sha256. A flipped byte either is refused or leaves what is loaded unchanged."""
    state = {"model": {"w": torch.arange(12.0)}, "opt": {"state": {0: {"step": torch.tensor(3.0)}},
                                                         "param_groups": [{"lr": 0.1, "params": [0]}]}}
    info = {"epoch": 3, "best_value": 0.5, "numpy_rng": {"state": {"state": 12345}}}
    save_checkpoint(tmp_path / "c.pt", state, info)
    raw = (tmp_path / "c.pt").read_bytes()
    refused = harmless = 0
    for pos in range(0, len(raw), 3):
        bad = bytearray(raw)
        bad[pos] ^= 0x55
        (tmp_path / "x.pt").write_bytes(bytes(bad))
        try:
            st, inf = load_checkpoint(tmp_path / "x.pt")
        except CmlError as e:
            assert "x.pt" in str(e)
            refused += 1
            continue
        assert inf == info and torch.equal(st["model"]["w"], state["model"]["w"])
        assert st["opt"]["param_groups"] == state["opt"]["param_groups"]
        harmless += 1
    for n in range(0, len(raw), 37):
        (tmp_path / "x.pt").write_bytes(raw[:n])
        with pytest.raises(CmlError):
            load_checkpoint(tmp_path / "x.pt")
    assert refused > len(raw) // 6, (refused, harmless)


def test_damaged_best_checkpoint_is_reported_at_resume_not_at_the_end(ds_dir, tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", str(ds_dir), "-o", str(run), "--epochs", "2", *FAST])
    assert res.exit_code == 0, res.output
    best = run / "checkpoints" / "best.pt"
    best_before = json.loads((run / "summary.json").read_text())["best_epoch"]
    best.write_bytes(best.read_bytes()[:-40] + b"\0" * 40)
    res = resume(run, "--epochs", "4")
    assert res.exit_code == 0, res.output
    assert "best.pt" in res.stderr and "renamed it best.corrupt.pt" in res.stderr
    assert (run / "checkpoints" / "best.corrupt.pt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 4
    if summary["best_epoch"] > 2:  # a later epoch did better: best.pt is whole again
        assert load_checkpoint(best)[1]["epoch"] == summary["best_epoch"]
        assert set(summary["test_at_best"]) >= {"hr@10", "ndcg@10"}
    else:  # the best epoch's weights are gone: no test score pretends to be theirs
        assert summary["best_epoch"] == best_before and not best.exists()
        assert summary["test_at_best"] is None and "no test score at the best epoch" in summary["warning"]


def test_a_best_checkpoint_of_another_epoch_is_not_scored_as_the_best(ds_dir, tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", str(ds_dir), "-o", str(run), "--epochs", "2", *FAST])
    assert res.exit_code == 0, res.output
    state, info = load_checkpoint(run / "checkpoints" / "best.pt")
    save_checkpoint(run / "checkpoints" / "best.pt", state, {**info, "epoch": info["epoch"] + 7})
    cfg = config_mod.resolve(overrides=["epochs=2", "backend=torch", "n_layers=1", "batch_size=32",
                                        "meta_batch=8", "meta_samples=4"])
    tr = Trainer(load_dataset(ds_dir), cfg, run, quiet=True)
    tr.prepare_run_dir(resume=True)
    out = tr.summary()
    assert out["test_at_best"] is None and "not the best epoch" in out["warning"]
