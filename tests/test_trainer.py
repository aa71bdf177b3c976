"""End-to-end training tests on a tiny dataset: determinism, exact resume, variants, baselines."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cml_dgl_cli.main import cli
from cml_dgl.data.dataset import write_dataset
from cml_dgl.train.checkpoint import load_checkpoint
from conftest import make_tiny_dataset
from conftest import metrics_rows as metrics

FAST = ["--set", "batch_size=32", "--set", "meta_batch=8", "--set", "meta_samples=4", "--quiet"]


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "ds"
    write_dataset(make_tiny_dataset(n_users=40, n_items=60, seed=3), d)
    return d


def train(ds_dir, run, *extra, expect=0):
    res = CliRunner().invoke(cli, ["train", str(ds_dir), "-o", str(run), *FAST, *extra])
    assert res.exit_code == expect, res.output
    return res


def test_same_seed_same_metrics_and_run_dir_contents(ds_dir, tmp_path):
    train(ds_dir, tmp_path / "a", "--epochs", "3", "--backend", "torch")
    train(ds_dir, tmp_path / "b", "--epochs", "3", "--backend", "torch")
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert len(a) == 3 and a == b
    assert {"epoch", "losses", "valid"} <= set(a[0]) and {"hr@10", "ndcg@10"} <= set(a[0]["valid"])
    assert "test" not in a[0], "honest protocol: the test split is not looked at per epoch"
    for name in ("config.yaml", "run.json", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / "a" / name).is_file(), name
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    best = max(a, key=lambda r: r["valid"]["ndcg@10"])
    assert summary["best_epoch"] == best["epoch"] and "test_at_best" in summary
    train(ds_dir, tmp_path / "c", "--epochs", "3", "--backend", "torch", "--seed", "7")
    assert metrics(tmp_path / "c") != a, "another seed draws differently"


def test_resume_equals_uninterrupted(ds_dir, tmp_path):
    train(ds_dir, tmp_path / "full", "--epochs", "4", "--backend", "torch")
    train(ds_dir, tmp_path / "part", "--epochs", "2", "--backend", "torch")
    res = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "part"), "--epochs", "4", "--quiet"])
    assert res.exit_code == 0, res.output
    assert metrics(tmp_path / "part") == metrics(tmp_path / "full")
    sa, _ = load_checkpoint(tmp_path / "full" / "checkpoints" / "best.pt")
    sb, _ = load_checkpoint(tmp_path / "part" / "checkpoints" / "best.pt")
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key


def test_resume_refuses_changed_config(ds_dir, tmp_path):
    train(ds_dir, tmp_path / "r", "--epochs", "1", "--backend", "torch")
    res = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "r"), "--set", "dim=8"])
    assert res.exit_code == 2 and "cannot change" in res.output


def test_monitor_test_marks_run(ds_dir, tmp_path):
    train(ds_dir, tmp_path / "t", "--epochs", "2", "--monitor", "test", "--backend", "torch")
    rows = metrics(tmp_path / "t")
    assert all("test" in r for r in rows)
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["test_selected"] is True
    assert summary["best_per_metric"]["hr@10"] == max(r["test"]["hr@10"] for r in rows)
    assert json.loads((tmp_path / "t" / "run.json").read_text())["test_selected"] is True


@pytest.mark.parametrize("variant", ["no-cl", "no-meta", "no-mke"])
def test_variants_train_and_differ(ds_dir, tmp_path, variant):
    train(ds_dir, tmp_path / "full", "--epochs", "2", "--backend", "torch")
    train(ds_dir, tmp_path / variant, "--epochs", "2", "--variant", variant, "--backend", "torch")
    a, b = metrics(tmp_path / "full"), metrics(tmp_path / variant)
    assert a[-1]["losses"] != b[-1]["losses"]
    if variant == "no-cl":
        assert "cl" not in b[-1]["losses"]
    if variant == "no-meta":
        assert "meta" not in b[-1]["losses"]


@pytest.mark.parametrize("model", ["pop", "pop-target", "mf", "lightgcn", "lightgcn-merged"])
def test_baselines_share_the_harness(ds_dir, tmp_path, model):
    train(ds_dir, tmp_path / model, "--epochs", "2", "--model", model, "--backend", "torch")
    rows = metrics(tmp_path / model)
    assert len(rows) == (1 if model.startswith("pop") else 2)
    assert 0 <= rows[-1]["valid"]["ndcg@10"] <= 1


def test_official_preset_runs_on_dgl(ds_dir, tmp_path):
    pytest.importorskip("dgl", reason="the DGL backend needs dgl 2.1 (pip install 'cml-dgl[dgl]')")
    train(ds_dir, tmp_path / "o", "--epochs", "1", "--preset", "official", "--backend", "dgl")
    cfg = (tmp_path / "o" / "config.yaml").read_text()
    assert "activation: sigmoid" in cfg and "cl_variant: official" in cfg


def test_existing_run_dir_and_no_valid(ds_dir, tmp_path):
    train(ds_dir, tmp_path / "x", "--epochs", "1", "--backend", "torch")
    res = train(ds_dir, tmp_path / "x", "--epochs", "1", expect=2)
    assert "--overwrite" in res.output
    ds = make_tiny_dataset(n_users=20, n_items=30)
    ds.valid = np.zeros((0, 2), dtype=np.int32)
    ds.valid_negatives = np.zeros((0, 99), dtype=np.int32)
    write_dataset(ds, tmp_path / "nv")
    res = train(tmp_path / "nv", tmp_path / "y", "--epochs", "1", expect=2)
    assert "no validation split" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("model", ["cml", "mf", "lightgcn"])
def test_a_dataset_without_training_purchases_is_a_clear_error(tmp_path, model):
    import dataclasses

    from cml_dgl.errors import CmlError
    from cml_dgl.train import config
    from cml_dgl.train.trainer import Trainer

    ds = make_tiny_dataset()
    keep = ds.train_behavior != ds.n_behaviors - 1
    ds = dataclasses.replace(ds, meta_users=np.arange(4), train_user=ds.train_user[keep],
                             train_item=ds.train_item[keep], train_behavior=ds.train_behavior[keep],
                             train_time=ds.train_time[keep])
    cfg = config.resolve(overrides=[f"model={model}", "backend=torch", "device=cpu"])
    with pytest.raises(CmlError, match="learns from the training 'buy' edges and the dataset has none"):
        Trainer(ds, cfg, tmp_path / "run", quiet=True)
