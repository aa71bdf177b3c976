"""Sampled and full ranking protocols against brute-force references; chunking; honest ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cml_dgl.errors import CmlError
from cml_dgl.eval.evaluate import (
    evaluate,
    evaluate_full,
    evaluate_sampled,
    full_rank_bounds,
    sampled_rank_bounds,
    training_mask,
)
from tests.conftest import make_tiny_dataset

KS = (1, 5, 10)


def reference_metrics(scores_pos: list[float], scores_competitors: list[np.ndarray], ks, tie_rule: str) -> dict:
    """Per-user Python loop: rank the positive among its competitors, averaging over tie orders."""
    per = {f"{m}@{k}": [] for k in ks for m in ("hr", "ndcg", "recall")}
    per["mrr"] = []
    for sp_, comp in zip(scores_pos, scores_competitors):
        g = sum(1 for s in comp if s > sp_)
        t = sum(1 for s in comp if s == sp_)
        ranks = {"expected": list(range(g, g + t + 1)), "pessimistic": [g + t], "optimistic": [g]}[tie_rule]
        for k in ks:
            hr = np.mean([r < k for r in ranks])
            per[f"hr@{k}"].append(hr)
            per[f"recall@{k}"].append(hr)
            per[f"ndcg@{k}"].append(np.mean([1 / math.log2(r + 2) if r < k else 0.0 for r in ranks]))
        per["mrr"].append(np.mean([1 / (r + 1) for r in ranks]))
    return {key: float(np.mean(v)) for key, v in per.items()}


def assert_metrics_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


def int_embeddings(n_users: int, n_items: int, d: int = 3, seed: int = 0):
    """Small-integer embeddings: dot products are exact in float32 and ties are frequent."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-2, 3, size=(n_users, d)).astype(np.float32),
            rng.integers(-2, 3, size=(n_items, d)).astype(np.float32))


@pytest.mark.parametrize("tie_rule", ["expected", "pessimistic", "optimistic"])
@pytest.mark.parametrize("integer", [False, True])
def test_sampled_matches_brute_force(tie_rule, integer):
    rng = np.random.default_rng(1)
    n_users, n_items, m = 30, 50, 12
    if integer:
        ue, ie = int_embeddings(n_users, n_items)
    else:
        ue, ie = rng.normal(size=(n_users, 4)).astype(np.float32), rng.normal(size=(n_items, 4)).astype(np.float32)
    users = rng.permutation(n_users)[:25]
    pos = rng.integers(0, n_items, size=25)
    negs = np.stack([rng.choice(np.setdiff1d(np.arange(n_items), [p]), m, replace=False) for p in pos])
    pairs = np.stack([users, pos], 1)
    got = evaluate_sampled((torch.from_numpy(ue), torch.from_numpy(ie)), pairs, negs, KS, tie_rule)
    s = ue.astype(np.float64) @ ie.astype(np.float64).T
    want = reference_metrics([s[u, p] for u, p in pairs], [s[u, negs[j]] for j, (u, _) in enumerate(pairs)],
                             KS, tie_rule)
    assert_metrics_close(got, want)
    if integer and tie_rule == "expected":
        _, t = sampled_rank_bounds((ue, ie), pairs, negs)
        assert t.sum() > 0  # the case really exercises ties


def random_mask(n_users: int, n_items: int, pairs: np.ndarray, seed: int) -> sp.csr_matrix:
    """A random mask that also contains some positives (which must never be excluded)."""
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.3
    dense[pairs[::3, 0], pairs[::3, 1]] = True
    return sp.csr_matrix(dense.astype(np.float32))


@pytest.mark.parametrize("tie_rule", ["expected", "pessimistic", "optimistic"])
def test_full_matches_dense_reference_with_masking(tie_rule):
    n_users, n_items = 20, 40
    ue, ie = int_embeddings(n_users, n_items, seed=2)
    rng = np.random.default_rng(2)
    pairs = np.stack([np.arange(n_users), rng.integers(0, n_items, size=n_users)], 1)
    mask = random_mask(n_users, n_items, pairs, seed=3)
    dense_mask = mask.toarray() > 0
    assert dense_mask[pairs[:, 0], pairs[:, 1]].any()  # some positives lie in the mask
    s = ue @ ie.T
    comps = []
    for u, p in pairs:
        keep = ~dense_mask[u]
        keep[p] = False
        comps.append(s[u, keep])
    want = reference_metrics([s[u, p] for u, p in pairs], comps, KS, tie_rule)
    got = evaluate_full((ue, ie), pairs, mask, KS, tie_rule)
    assert_metrics_close(got, want)
    # without a mask every other item competes
    want_nomask = reference_metrics([s[u, p] for u, p in pairs], [np.delete(s[u], p) for u, p in pairs],
                                    KS, tie_rule)
    assert_metrics_close(evaluate_full((ue, ie), pairs, None, KS, tie_rule), want_nomask)


def test_positive_is_never_masked():
    # one user, 5 items all scoring 1; the positive and two others are "training" items
    ue = np.ones((1, 1), dtype=np.float32)
    ie = np.ones((5, 1), dtype=np.float32)
    mask = sp.csr_matrix(np.array([[1, 1, 0, 0, 1]], dtype=np.float32))
    g, t = full_rank_bounds((ue, ie), np.array([[0, 1]]), mask)
    assert g.tolist() == [0] and t.tolist() == [2]  # items 2 and 3 tie with it; 0 and 4 are masked


def test_duplicate_mask_entries_count_once():
    ue = np.ones((1, 1), dtype=np.float32)
    ie = np.array([[3.0], [1.0], [2.0], [0.0]], dtype=np.float32)
    # item 0 stored twice (non-canonical csr)
    mask = sp.csr_matrix((np.ones(2, dtype=np.float32), np.array([0, 0]), np.array([0, 2])), shape=(1, 4))
    g, t = full_rank_bounds((ue, ie), np.array([[0, 1]]), mask)
    assert g.tolist() == [1] and t.tolist() == [0]  # only item 2 (score 2) beats item 1 (score 1)


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_chunk_size_does_not_change_results(protocol):
    ds = make_tiny_dataset(n_users=25, n_items=30, seed=4)
    ue, ie = int_embeddings(ds.n_users, ds.n_items, seed=4)
    big = evaluate(ds, (ue, ie), protocol=protocol, ks=KS, tie_rule="random", mask="all", seed=3,
                   max_chunk_elems=1 << 30)
    for elems in (1, 7, 95, 31 * 3):
        small = evaluate(ds, (ue, ie), protocol=protocol, ks=KS, tie_rule="random", mask="all", seed=3,
                         max_chunk_elems=elems)
        assert small == big
    if protocol == "full":
        a = full_rank_bounds((ue, ie), ds.test, training_mask(ds, "all"), max_chunk_elems=1)
        b = full_rank_bounds((ue, ie), ds.test, training_mask(ds, "all"), max_chunk_elems=10**9)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def cold_item_case(n_users=600, n_items=1000, n_cold=900, seed=0):
    """Random-init embeddings where 90% of items are cold and share one embedding row.

    Positives and negatives are drawn the same way, so no ranking beats chance; but a cold positive
    ties with every cold negative (~89 of 99), and ranking it first among them looks excellent.
    """
    rng = np.random.default_rng(seed)
    d = 8
    ue = torch.from_numpy(rng.normal(size=(n_users, d)).astype(np.float32))
    ie = torch.from_numpy(rng.normal(size=(n_items, d)).astype(np.float32))
    cold = rng.permutation(n_items)[:n_cold]
    ie[cold] = ie[cold[0]].clone()
    pos = rng.integers(0, n_items, size=n_users)
    negs = np.stack([rng.choice(np.setdiff1d(np.arange(n_items), [p]), 99, replace=False) for p in pos])
    pairs = np.stack([np.arange(n_users), pos], 1)
    return ue, ie, pairs, negs, np.isin(pos, cold)


def test_untrained_model_scores_chance_under_expected_but_optimistic_inflates():
    ue, ie, pairs, negs, pos_cold = cold_item_case()
    assert pos_cold.mean() > 0.8
    exp = evaluate_sampled((ue, ie), pairs, negs, (10,), "expected")
    opt = evaluate_sampled((ue, ie), pairs, negs, (10,), "optimistic")
    pes = evaluate_sampled((ue, ie), pairs, negs, (10,), "pessimistic")
    assert abs(exp["hr@10"] - 0.10) < 0.03
    assert opt["hr@10"] > 0.5  # topk-style luck: cold positives jump ahead of ~89 tied cold negatives
    assert pes["hr@10"] < 0.05
    # the same tie is seen by the full protocol (one score matrix per chunk)
    n_items = ie.shape[0]
    exp_full = evaluate_full((ue, ie), pairs, None, (100,), "expected", max_chunk_elems=70 * n_items)
    opt_full = evaluate_full((ue, ie), pairs, None, (100,), "optimistic", max_chunk_elems=70 * n_items)
    assert abs(exp_full["hr@100"] - 0.10) < 0.03
    assert opt_full["hr@100"] > 0.5


def test_no_ties_untrained_model_is_near_chance():
    rng = np.random.default_rng(5)
    n_users, n_items = 800, 500
    ue, ie = rng.normal(size=(n_users, 8)), rng.normal(size=(n_items, 8))
    pos = rng.integers(0, n_items, size=n_users)
    negs = np.stack([rng.choice(np.setdiff1d(np.arange(n_items), [p]), 99, replace=False) for p in pos])
    m = evaluate_sampled((ue, ie), np.stack([np.arange(n_users), pos], 1), negs, (10,))
    assert abs(m["hr@10"] - 0.10) < 0.03


def test_evaluate_result_records_and_masks():
    ds = make_tiny_dataset(seed=6)
    ue, ie = int_embeddings(ds.n_users, ds.n_items, seed=6)
    res = evaluate(ds, (torch.from_numpy(ue), torch.from_numpy(ie)), split="valid", protocol="both", ks=(5, 10))
    assert [r["protocol"] for r in res] == ["sampled", "full"]
    for r in res:
        assert r["split"] == "valid" and r["tie_rule"] == "expected" and r["n_users"] == len(ds.valid)
        assert set(r["metrics"]) == {"hr@5", "ndcg@5", "recall@5", "hr@10", "ndcg@10", "recall@10", "mrr"}
    assert res[0]["metrics"] == evaluate_sampled((ue, ie), ds.valid, ds.valid_negatives, (5, 10))
    assert res[1]["metrics"] == evaluate_full((ue, ie), ds.valid, ds.csr(ds.n_behaviors - 1), (5, 10))
    # mask="all" excludes every behavior's training items (and, on the test split, the valid item)
    union = sum(ds.csr(k) for k in range(ds.n_behaviors))
    union = union + sp.csr_matrix((np.ones(len(ds.valid)), (ds.valid[:, 0], ds.valid[:, 1])), shape=union.shape)
    full_all = evaluate(ds, (ue, ie), protocol="full", ks=(5, 10), mask="all")[0]
    assert full_all["metrics"] == evaluate_full((ue, ie), ds.test, union, (5, 10))
    assert (training_mask(ds, "all", "test").toarray() > 0).sum() == (union.toarray() > 0).sum()
    assert full_all["metrics"] != evaluate(ds, (ue, ie), protocol="full", ks=(5, 10), mask="target")[0]["metrics"]


def test_empty_split_and_bad_inputs_raise_cml_error():
    ds = make_tiny_dataset()
    ue, ie = int_embeddings(ds.n_users, ds.n_items)
    ds.valid = np.zeros((0, 2), dtype=np.int32)
    ds.valid_negatives = np.zeros((0, 99), dtype=np.int32)
    with pytest.raises(CmlError, match="no valid split; it was made with --no-valid"):
        evaluate(ds, (ue, ie), split="valid")
    with pytest.raises(CmlError, match="another dataset"):
        evaluate(ds, (ue[:-1], ie))
    with pytest.raises(CmlError, match="protocol"):
        evaluate(ds, (ue, ie), protocol="all-items")
    with pytest.raises(CmlError, match="tie rule"):
        evaluate(ds, (ue, ie), tie_rule="topk")
    with pytest.raises(CmlError, match="NaN"):
        evaluate(ds, (ue, np.full_like(ie, np.nan)))
    negs = ds.test_negatives.copy()
    negs[2, 0] = ds.test[2, 1]
    with pytest.raises(CmlError, match="row 2 contains its own positive"):
        evaluate_sampled((ue, ie), ds.test, negs, (10,))


def test_test_split_masks_the_validation_purchase(tiny_dataset):
    ds = tiny_dataset
    m_test = training_mask(ds, "target", "test").toarray() > 0
    m_valid = training_mask(ds, "target", "valid").toarray() > 0
    assert m_test[ds.valid[:, 0], ds.valid[:, 1]].all()
    assert (m_test & ~m_valid).sum() == len({(u, i) for u, i in ds.valid} - set(zip(*ds.edges(ds.n_behaviors - 1))))
    assert not m_valid[ds.valid[:, 0], ds.valid[:, 1]].any()
