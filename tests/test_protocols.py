"""The trainer's protocols (paper, honest, fixed epochs), test_groups, the epoch callback, and a
dataset without a test split never being scored on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cml_dgl.data.dataset import write_dataset
from cml_dgl.errors import CmlError
from cml_dgl.train import config
from cml_dgl.train.trainer import Trainer
from tests.conftest import make_tiny_dataset, run_cli_ok

SMALL = ["--backend", "torch", "--quiet", "--set", "batch_size=64", "--set", "dim=8"]


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("protocols") / "ds"
    write_dataset(make_tiny_dataset(n_users=30, n_items=50, seed=2), d)
    return d


@pytest.mark.parametrize("monitor, label", [("valid", "honest"), ("test", "paper"), ("none", "fixed-epochs")])
def test_every_run_names_its_protocol_and_its_seen_and_new_test_users(ds_dir, tmp_path, monitor, label):
    run = tmp_path / "run"
    run_cli_ok("train", ds_dir, "-o", run, "--model", "mf", "--epochs", "3", "--set", f"monitor={monitor}", *SMALL)
    summary = json.loads((run / "summary.json").read_text())
    info = json.loads((run / "run.json").read_text())
    assert summary["protocol"] == info["protocol"] == label and "refit_from" not in summary
    assert summary["test_selected"] == (monitor == "test")
    groups = summary["test_groups"]
    assert groups["seen"]["n_users"] + groups["new"]["n_users"] == 30
    best = json.loads(run_cli_ok("evaluate", run, "--json", "-k", "10").output)  # the best checkpoint
    assert groups["new"]["metrics"]["ndcg@10"] == pytest.approx(best["groups"]["new"]["metrics"]["ndcg@10"],
                                                                abs=1e-6)
    assert ("test_at_best" in summary) == (monitor != "test")


def test_monitor_none_selects_nothing_and_reads_the_test_split_after_the_last_epoch(ds_dir, tmp_path):
    run = tmp_path / "run"
    run_cli_ok("train", ds_dir, "-o", run, "--model", "mf", "--epochs", "4", "--patience", "1",
               "--set", "monitor=none", "--set", "opt_base_lr=0", "--set", "opt_max_lr=0", *SMALL)
    summary = json.loads((run / "summary.json").read_text())
    # lr 0: the validation value never improves, yet neither patience nor selection stops or picks
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len({r["valid"]["ndcg@10"] for r in rows}) == 1 and all("test" not in r for r in rows)
    assert summary["best_epoch"] == summary["epochs_run"] == 4
    last = json.loads(run_cli_ok("evaluate", run, "--json", "-k", "10", "--checkpoint", "last").output)
    assert summary["test_at_best"]["ndcg@10"] == pytest.approx(last["metrics"]["ndcg@10"], abs=1e-6)


def test_monitor_none_trains_a_dataset_without_validation(tmp_path):
    ds = make_tiny_dataset(n_users=30, n_items=50, seed=2)
    ds.valid, ds.valid_negatives = np.zeros((0, 2), np.int32), np.zeros((0, 48), np.int32)
    base = config.resolve(overrides=["model=mf", "epochs=2", "backend=torch", "batch_size=64"])
    with pytest.raises(CmlError, match="no validation split"):
        Trainer(ds, base, tmp_path / "refused", quiet=True)
    trainer = Trainer(ds, {**base, "monitor": "none"}, tmp_path / "run", quiet=True)
    trainer.prepare_run_dir()
    out = trainer.fit()
    assert out["best_epoch"] == 2 and "test_at_best" in out and "valid" not in out["best"]


def test_the_epoch_callback_sees_each_row_on_disk_and_can_stop_training(ds_dir, tmp_path):
    from cml_dgl.data.dataset import load_dataset

    ds = load_dataset(ds_dir)
    cfg = config.resolve(overrides=["model=mf", "epochs=5", "backend=torch", "batch_size=64"])
    seen: list[tuple[int, float, int]] = []

    class Stop(Exception):
        pass

    def on_epoch(epoch, row):
        lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        seen.append((epoch, row["valid"]["ndcg@10"], len(lines)))
        if epoch == 2:
            raise Stop

    trainer = Trainer(ds, cfg, tmp_path / "run", quiet=True)
    trainer.prepare_run_dir()
    with pytest.raises(Stop):
        trainer.fit(on_epoch=on_epoch)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(e, n) for e, _, n in seen] == [(1, 1), (2, 2)] and len(rows) == 2
    assert [v for _, v, _ in seen] == [r["valid"]["ndcg@10"] for r in rows]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_dataset_without_test_pairs_is_never_scored_on_them(ds_dir, tmp_path, monkeypatch):
    from cml_dgl.data.dataset import load_dataset
    from cml_dgl.train import trainer as trainer_mod

    ds = load_dataset(ds_dir)
    ds.test, ds.test_negatives = np.zeros((0, 2), np.int32), np.zeros((0, 48), np.int32)
    scored = []
    real = trainer_mod.evaluate_sampled
    monkeypatch.setattr(trainer_mod, "evaluate_sampled", lambda u, i, pairs, *a, **k: scored.append(len(pairs))
                        or real(u, i, pairs, *a, **k))
    cfg = config.resolve(overrides=["model=mf", "epochs=2", "backend=torch", "batch_size=64"])
    trainer = Trainer(ds, cfg, tmp_path / "run", quiet=True)
    trainer.prepare_run_dir()
    out = trainer.fit()
    assert scored == [30, 30]  # the two validation evaluations, nothing else
    assert "test_at_best" not in out and "test_groups" not in out and out["protocol"] == "honest"
