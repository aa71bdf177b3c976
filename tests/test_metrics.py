"""Rank metrics for one relevant item: hand-computed cases, every tie rule, exact expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cml_dgl.errors import CmlError
from cml_dgl.eval.metrics import TIE_RULES, metrics_from_bounds, per_user_metrics, positive_rank_bounds


def disc(r: int) -> float:
    """NDCG gain of a single relevant item at 0-based rank r."""
    return 1.0 / math.log2(r + 2)


def test_rank_bounds_count_greater_and_tied_numpy_and_torch():
    pos = np.array([0.5, 1.0, 2.0])
    neg = np.array([[0.7, 0.5, 0.5, 0.1],   # 1 above, 2 tied
                    [0.0, 0.2, 0.3, 0.4],   # best: 0 above, 0 tied
                    [2.0, 2.0, 2.0, 3.0]])  # 1 above, 3 tied
    g, t = positive_rank_bounds(pos, neg)
    assert g.tolist() == [1, 0, 1] and t.tolist() == [2, 0, 3]
    assert g.dtype == np.int64 and t.dtype == np.int64
    gt, tt = positive_rank_bounds(torch.tensor(pos), torch.tensor(neg))
    assert gt.tolist() == [1, 0, 1] and tt.tolist() == [2, 0, 3]
    with pytest.raises(ValueError):
        positive_rank_bounds(pos, neg[:2])


def test_no_ties_single_rank_all_rules_agree():
    # ranks 0, 3, 9, 10, 25 with no ties
    g = np.array([0, 3, 9, 10, 25])
    t = np.zeros(5, dtype=int)
    want_hr10 = (1 + 1 + 1 + 0 + 0) / 5
    want_ndcg10 = (disc(0) + disc(3) + disc(9)) / 5          # 1 + 1/log2(5) + 1/log2(11)
    want_hr20 = 4 / 5
    want_ndcg20 = (disc(0) + disc(3) + disc(9) + disc(10)) / 5
    want_mrr = (1 + 1 / 4 + 1 / 10 + 1 / 11 + 1 / 26) / 5
    for rule in TIE_RULES:
        m = metrics_from_bounds(g, t, (10, 20), rule, np.random.default_rng(1))
        assert m["hr@10"] == pytest.approx(want_hr10, abs=1e-15)
        assert m["recall@10"] == m["hr@10"]
        assert m["ndcg@10"] == pytest.approx(want_ndcg10, rel=1e-14)
        assert m["hr@20"] == pytest.approx(want_hr20, abs=1e-15)
        assert m["ndcg@20"] == pytest.approx(want_ndcg20, rel=1e-14)
        assert m["mrr"] == pytest.approx(want_mrr, rel=1e-14)
        assert set(m) == {"hr@10", "ndcg@10", "recall@10", "hr@20", "ndcg@20", "recall@20", "mrr"}


def test_positive_tied_with_three_negatives_at_rank_8():
    # 8 negatives above, 3 tied: the positive's rank is 8, 9, 10 or 11 (0-based), each w.p. 1/4.
    g, t = np.array([8]), np.array([3])
    m = per_user_metrics(g, t, (10, 9, 12), "expected")
    # @10: ranks 8, 9 hit -> 2/4; gains 1/log2(10) + 1/log2(11) over 4 orders
    assert m["hr@10"][0] == 0.5
    assert m["ndcg@10"][0] == pytest.approx((1 / math.log2(10) + 1 / math.log2(11)) / 4, rel=1e-14)
    # @9: only rank 8 hits -> 1/4, gain 1/log2(10) / 4
    assert m["hr@9"][0] == 0.25
    assert m["ndcg@9"][0] == pytest.approx(1 / math.log2(10) / 4, rel=1e-14)
    # @12: every order hits -> 1; gain = mean of the four discounts
    assert m["hr@12"][0] == 1.0
    assert m["ndcg@12"][0] == pytest.approx(sum(disc(r) for r in (8, 9, 10, 11)) / 4, rel=1e-14)
    assert m["mrr"][0] == pytest.approx((1 / 9 + 1 / 10 + 1 / 11 + 1 / 12) / 4, rel=1e-13)

    pes = per_user_metrics(g, t, (10,), "pessimistic")  # rank 11: a miss
    assert pes["hr@10"][0] == 0.0 and pes["ndcg@10"][0] == 0.0
    assert pes["mrr"][0] == pytest.approx(1 / 12, rel=1e-15)
    opt = per_user_metrics(g, t, (10,), "optimistic")  # rank 8: a hit
    assert opt["hr@10"][0] == 1.0
    assert opt["ndcg@10"][0] == pytest.approx(1 / math.log2(10), rel=1e-15)
    assert opt["mrr"][0] == pytest.approx(1 / 9, rel=1e-15)


def test_random_rule_draws_a_rank_within_the_ties_reproducibly():
    n = 4000
    g = np.full(n, 8)
    t = np.full(n, 3)
    a = per_user_metrics(g, t, (10,), "random", np.random.default_rng(7))
    b = per_user_metrics(g, t, (10,), "random", np.random.default_rng(7))
    c = per_user_metrics(g, t, (10,), "random", np.random.default_rng(8))
    np.testing.assert_array_equal(a["mrr"], b["mrr"])
    assert not np.array_equal(a["mrr"], c["mrr"])
    # each user's MRR is 1/(r+1) of one rank r in 8..11, and every rank occurs
    ranks = np.rint(1 / a["mrr"] - 1).astype(int)
    assert set(ranks.tolist()) == {8, 9, 10, 11}
    np.testing.assert_array_equal(a["hr@10"], (ranks < 10).astype(float))
    assert a["hr@10"].mean() == pytest.approx(0.5, abs=0.05)


def test_all_equal_scores_on_1_plus_99_is_exactly_chance_under_expected():
    n = 37
    pos = np.zeros(n, dtype=np.float32)
    neg = np.zeros((n, 99), dtype=np.float32)
    g, t = positive_rank_bounds(pos, neg)
    assert (g == 0).all() and (t == 99).all()
    per = per_user_metrics(g, t, (10, 20), "expected")
    assert (per["hr@10"] == 0.10).all()  # 10 of the 100 equally likely ranks hit
    assert (per["hr@20"] == 0.20).all()
    m = metrics_from_bounds(g, t, (10, 20), "expected")
    assert m["hr@10"] == pytest.approx(0.10, abs=1e-15)
    assert m["ndcg@10"] == pytest.approx(sum(disc(r) for r in range(10)) / 100, rel=1e-14)
    assert m["ndcg@20"] == pytest.approx(sum(disc(r) for r in range(20)) / 100, rel=1e-14)
    assert m["mrr"] == pytest.approx(sum(1 / (r + 1) for r in range(100)) / 100, rel=1e-13)
    # luck-dependent rules swing to the extremes on the same scores
    assert metrics_from_bounds(g, t, (10,), "optimistic")["hr@10"] == 1.0
    assert metrics_from_bounds(g, t, (10,), "pessimistic")["hr@10"] == 0.0


def test_expected_matches_a_loop_over_every_tie_order():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 60, size=300)
    t = rng.integers(0, 60, size=300)
    t[:20] = 0
    ks = (1, 10, 40)
    m = per_user_metrics(g, t, ks, "expected")
    for j in range(len(g)):
        ranks = range(g[j], g[j] + t[j] + 1)
        for k in ks:
            assert m[f"hr@{k}"][j] == pytest.approx(np.mean([r < k for r in ranks]), abs=1e-14)
            assert m[f"ndcg@{k}"][j] == pytest.approx(np.mean([disc(r) if r < k else 0.0 for r in ranks]),
                                                      rel=1e-12, abs=1e-15)
        assert m["mrr"][j] == pytest.approx(np.mean([1 / (r + 1) for r in ranks]), rel=1e-12)


def test_expected_mrr_is_accurate_for_large_ranks():
    # full-protocol sized ranks: digamma differences must not lose the small reciprocal
    g = np.array([4_000_000, 3_999_990])
    t = np.array([0, 20])
    m = per_user_metrics(g, t, (10,), "expected")
    assert m["mrr"][0] == 1 / 4_000_001
    want = math.fsum(1 / (r + 1) for r in range(3_999_990, 4_000_011)) / 21
    assert m["mrr"][1] == pytest.approx(want, rel=1e-7)


def test_expected_lies_between_pessimistic_and_optimistic():
    rng = np.random.default_rng(3)
    g = rng.integers(0, 30, size=200)
    t = rng.integers(0, 30, size=200)
    e = metrics_from_bounds(g, t, (5, 10), "expected")
    lo = metrics_from_bounds(g, t, (5, 10), "pessimistic")
    hi = metrics_from_bounds(g, t, (5, 10), "optimistic")
    for key in e:
        assert lo[key] < e[key] < hi[key]


def test_bad_arguments_are_refused():
    with pytest.raises(CmlError, match="tie rule"):
        metrics_from_bounds([0], [0], (10,), "lucky")
    with pytest.raises(CmlError, match="ks"):
        metrics_from_bounds([0], [0], (0,), "expected")
    with pytest.raises(ValueError, match="no users"):
        metrics_from_bounds([], [], (10,), "expected")
    with pytest.raises(ValueError, match="non-negative"):
        metrics_from_bounds([-1], [0], (10,), "expected")
