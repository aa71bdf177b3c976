"""Seen / new users: whether the held-out item is among the user's own auxiliary training items."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cml_dgl.data.dataset import Dataset, write_dataset
from cml_dgl.eval.evaluate import evaluate, evaluate_full, evaluate_sampled, seen_in_auxiliary, training_mask
from tests.conftest import make_tiny_dataset, run_cli_ok


def with_auxiliary_edges(ds: Dataset, pairs: np.ndarray, behavior: int) -> Dataset:
    """``ds`` with one training edge of ``behavior`` added for each (user, item) of ``pairs``."""
    n = len(pairs)
    ds.train_user = np.concatenate([ds.train_user, pairs[:, 0].astype(np.int32)])
    ds.train_item = np.concatenate([ds.train_item, pairs[:, 1].astype(np.int32)])
    ds.train_behavior = np.concatenate([ds.train_behavior, np.full(n, behavior, np.int8)])
    ds.train_time = np.concatenate([ds.train_time, np.zeros(n, np.int64)])
    return ds


def restricted(ds: Dataset, split: str, rows: np.ndarray) -> Dataset:
    """A copy of ``ds`` whose ``split`` keeps only ``rows`` (for an independent per-group result)."""
    out = Dataset(**{**ds.__dict__})
    setattr(out, split, getattr(ds, split)[rows])
    setattr(out, f"{split}_negatives", getattr(ds, f"{split}_negatives")[rows])
    return out


@pytest.fixture
def grouped():
    ds = make_tiny_dataset(n_users=20, n_items=40, seed=3)
    # users 0, 3, 6, ... viewed (behavior 0) or carted (1) their own test item; user 1's test item is
    # another user's view (not seen for user 1); valid items of users 2 and 5 were carted
    own = ds.test[::3]
    ds = with_auxiliary_edges(ds, own[: len(own) // 2], 0)
    ds = with_auxiliary_edges(ds, own[len(own) // 2:], 1)
    ds = with_auxiliary_edges(ds, np.array([[4, ds.test[1, 1]]]), 0)
    ds = with_auxiliary_edges(ds, ds.valid[[2, 5]], 1)
    rng = np.random.default_rng(0)
    return ds, rng.normal(size=(ds.n_users, 4)), rng.normal(size=(ds.n_items, 4))


def test_seen_means_the_users_own_auxiliary_training_items(grouped):
    ds, _, _ = grouped
    seen = seen_in_auxiliary(ds, ds.test)
    assert np.flatnonzero(seen).tolist() == list(range(0, 20, 3))
    assert np.flatnonzero(seen_in_auxiliary(ds, ds.valid)).tolist() == [2, 5]
    # a target (purchase) edge does not make a pair seen
    target_only = make_tiny_dataset(n_users=20, n_items=40, seed=3)
    target_only = with_auxiliary_edges(target_only, target_only.test[:4], target_only.n_behaviors - 1)
    assert not seen_in_auxiliary(target_only, target_only.test).any()


@pytest.mark.parametrize("split", ["test", "valid"])
def test_groups_are_the_metrics_of_their_users_alone(grouped, split):
    ds, ue, ie = grouped
    seen = seen_in_auxiliary(ds, getattr(ds, split))
    for res in evaluate(ds, (ue, ie), split=split, protocol="both", ks=(5, 10)):
        groups = res["groups"]
        assert list(groups) == ["seen", "new"]
        assert groups["seen"]["n_users"] == seen.sum() and groups["new"]["n_users"] == (~seen).sum()
        for name, rows in (("seen", np.flatnonzero(seen)), ("new", np.flatnonzero(~seen))):
            alone = evaluate(restricted(ds, split, rows), (ue, ie), split=split, protocol=res["protocol"],
                             ks=(5, 10))[0]["metrics"]
            assert groups[name]["metrics"] == pytest.approx(alone, rel=1e-12)
        n = res["n_users"]
        for key, v in res["metrics"].items():
            parts = sum(g["n_users"] * g["metrics"][key] for g in groups.values())
            assert parts / n == pytest.approx(v, rel=1e-12)


def test_the_overall_metrics_are_unchanged(grouped):
    ds, ue, ie = grouped
    sampled, full = evaluate(ds, (ue, ie), protocol="both", ks=(10,), tie_rule="random", seed=5)
    assert sampled["metrics"] == evaluate_sampled((ue, ie), ds.test, ds.test_negatives, (10,), "random", 5)
    assert full["metrics"] == evaluate_full((ue, ie), ds.test, training_mask(ds, "target", "test"), (10,),
                                            "random", 5)


def test_an_empty_group_has_no_metrics():
    ds = make_tiny_dataset(n_users=20, n_items=40, seed=3)
    rng = np.random.default_rng(1)
    res = evaluate(ds, (rng.normal(size=(20, 4)), rng.normal(size=(40, 4))))[0]
    assert res["groups"]["seen"] == {"n_users": 0, "metrics": None}
    assert res["groups"]["new"]["n_users"] == 20 and res["groups"]["new"]["metrics"] == res["metrics"]


def test_cml_evaluate_prints_and_returns_the_groups(grouped, tmp_path):
    ds, _, _ = grouped
    write_dataset(ds, tmp_path / "ds")
    run_cli_ok("train", tmp_path / "ds", "-o", tmp_path / "run", "--model", "pop", "--quiet")
    res = json.loads(run_cli_ok("evaluate", tmp_path / "run", "--json", "-k", "10").output)
    assert res["groups"]["seen"]["n_users"] == 7 and res["groups"]["new"]["n_users"] == 13
    text = run_cli_ok("evaluate", tmp_path / "run", "-k", "10", "--protocol", "both").output
    lines = [line.strip() for line in text.splitlines()]
    seen = [line for line in lines if line.startswith("seen (7 users): hr@10 ")]
    assert len(seen) == 2 and len([line for line in lines if line.startswith("new (13 users): hr@10 ")]) == 2
    assert f"ndcg@10 {res['groups']['seen']['metrics']['ndcg@10']:.4f}" in seen[0]
