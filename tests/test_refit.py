"""The honest refit: training + validation purchases, the source's epochs and seed, test read once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from cml_dgl.data.dataset import load_dataset, write_dataset
from cml_dgl.errors import CmlError
from cml_dgl.runs import load_run
from cml_dgl.train.refit import refit_dataset
from tests.conftest import assert_one_line_error, make_tiny_dataset, run_cli, run_cli_ok

SMALL = ["--backend", "torch", "--quiet", "--set", "batch_size=64", "--set", "dim=8"]


def edge_keys(ds, behaviors) -> np.ndarray:
    on = np.isin(ds.train_behavior, behaviors)
    return np.sort(ds.train_behavior[on].astype(np.int64) * 10**8 + ds.train_user[on].astype(np.int64) * 10**4
                   + ds.train_item[on])


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    base = tmp_path_factory.mktemp("refit")
    ds = make_tiny_dataset(n_users=30, n_items=50, seed=5)
    ds.options = {"held_out_auxiliary": "auto", "stats": {"held_out_auxiliary": "drop"}}
    write_dataset(ds, base / "ds")
    run_cli_ok("train", base / "ds", "-o", base / "honest", "--model", "mf", "--epochs", "4", *SMALL)
    return base


def test_the_refit_dataset_adds_each_validation_purchase_and_keeps_the_test_split(honest):
    src = load_dataset(honest / "ds")
    before = src.train_user.copy()
    ds = refit_dataset(src, honest / "honest")
    target = src.n_behaviors - 1
    added = src.valid[:, 0].astype(np.int64) * 10**4 + src.valid[:, 1] + target * 10**8
    assert np.array_equal(edge_keys(ds, [target]), np.sort(np.concatenate([edge_keys(src, [target]), added])))
    assert np.array_equal(edge_keys(ds, [0, 1]), edge_keys(src, [0, 1]))  # auxiliary edges as preprocessed
    assert len(ds.valid) == 0 and ds.valid_negatives.shape == (0, src.test_negatives.shape[1])
    assert np.array_equal(ds.test, src.test) and np.array_equal(ds.test_negatives, src.test_negatives)
    assert ds.id_map_checksum() == src.id_map_checksum() and np.array_equal(src.train_user, before)
    info = ds.options["refit"]
    assert info["source_run"] == str((honest / "honest").resolve()) and info["added_purchases"] == 30
    assert info["held_out_auxiliary"] == "drop" and info["valid_pairs_in_auxiliary"] == 0
    assert ds.options["stats"] == src.options["stats"] and "refit" not in src.options


def test_the_refit_dataset_refuses_what_would_make_it_unfair(honest):
    src = load_dataset(honest / "ds")
    src.test_negatives = src.test_negatives.copy()
    src.test_negatives[3, 7] = src.valid[3, 1]
    with pytest.raises(CmlError, match="test_negatives row 3 holds user 3's validation item"):
        refit_dataset(src)
    src.valid = np.zeros((0, 2), np.int32)
    with pytest.raises(CmlError, match="no validation split"):
        refit_dataset(src)


def test_refit_retrains_for_the_selected_epochs_and_reads_the_test_split_once(honest, tmp_path):
    out = tmp_path / "refit"
    line = json.loads(run_cli_ok("refit", honest / "honest", "-o", out, "--quiet").stdout.splitlines()[-1])
    source = json.loads((honest / "honest" / "summary.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    info = json.loads((out / "run.json").read_text())
    assert line["run_dir"] == str(out) and line["protocol"] == "honest-refit"
    assert summary["protocol"] == info["protocol"] == "honest-refit"
    assert summary["refit_from"] == info["refit_from"] == str((honest / "honest").resolve())
    assert summary["epochs_run"] == summary["best_epoch"] == source["best_epoch"]
    assert info["dataset"] == str((out / "dataset").resolve()) and not summary["test_selected"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == source["best_epoch"] and all("valid" not in r and "test" not in r for r in rows)
    cfg, src_cfg = (yaml.safe_load((d / "config.yaml").read_text()) for d in (out, honest / "honest"))
    assert cfg == {**src_cfg, "epochs": source["best_epoch"], "monitor": "none"}
    again = json.loads(run_cli_ok("evaluate", out, "--json", "-k", "10").output)  # reads OUT/dataset
    assert again["metrics"]["ndcg@10"] == pytest.approx(summary["test_at_best"]["ndcg@10"], abs=1e-6)
    assert summary["test_groups"]["new"]["n_users"] + summary["test_groups"]["seen"]["n_users"] == 30
    assert len(load_dataset(out / "dataset").edges(2)[0]) == len(load_dataset(honest / "ds").edges(2)[0]) + 30
    resumed = json.loads(run_cli_ok("train", "--resume", out, "--quiet").stdout.splitlines()[-1])
    assert {k: v for k, v in resumed.items() if k != "run_dir"} == summary  # an ordinary, resumable run


def test_the_refit_model_learns_from_the_validation_purchases(honest, tmp_path):
    run_cli_ok("train", honest / "ds", "-o", tmp_path / "pop", "--model", "pop-target", "--quiet")
    run_cli_ok("refit", tmp_path / "pop", "-o", tmp_path / "refit", "--quiet")
    src, ref = load_run(tmp_path / "pop"), load_run(tmp_path / "refit")
    ds = load_dataset(honest / "ds")
    counts = np.bincount(ds.edges(2)[1], minlength=ds.n_items)
    with_valid = counts + np.bincount(ds.valid[:, 1], minlength=ds.n_items)
    for run, want in ((src, counts), (ref, with_valid)):
        scores = run.model.score(torch.zeros(ds.n_items, dtype=torch.int64), torch.arange(ds.n_items))
        order = np.argsort(-scores.numpy(), kind="stable")
        assert np.all(np.diff(want[order]) <= 0)  # items ranked by their purchase counts
    assert json.loads((tmp_path / "refit" / "summary.json").read_text())["best_epoch"] == 0


def test_refit_refuses_what_is_not_a_finished_honest_run(honest, tmp_path):
    run_cli_ok("train", honest / "ds", "-o", tmp_path / "paper", "--model", "mf", "--epochs", "1",
               "--monitor", "test", *SMALL)
    assert_one_line_error(run_cli("refit", tmp_path / "paper", "-o", tmp_path / "x"), "protocol paper",
                          "monitor: valid")
    (tmp_path / "unfinished").mkdir()
    for name in ("config.yaml", "run.json"):
        (tmp_path / "unfinished" / name).write_bytes((honest / "honest" / name).read_bytes())
    assert_one_line_error(run_cli("refit", tmp_path / "unfinished", "-o", tmp_path / "x"),
                          "summary.json: missing", "has not finished")
    assert_one_line_error(run_cli("refit", tmp_path / "nothing", "-o", tmp_path / "x"), "not a run directory")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    assert_one_line_error(run_cli("refit", honest / "honest", "-o", tmp_path / "busy"), "not empty", "--overwrite")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine" and not (tmp_path / "x").exists()


def test_the_python_api_refits_and_opens_the_new_run(honest, tmp_path):
    import cml_dgl

    run = cml_dgl.refit(honest / "honest", tmp_path / "api")
    assert run.ds.path == tmp_path / "api" / "dataset" and len(run.ds.valid) == 0
    assert run.info["epoch"] == json.loads((honest / "honest" / "summary.json").read_text())["best_epoch"]
    assert cml_dgl.evaluate(run)[0]["groups"]["new"]["n_users"] == 30
