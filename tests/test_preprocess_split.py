"""Leave-one-out and the stored negative candidates (cml_dgl.data.split)."""

import numpy as np
import pytest

from cml_dgl.data import split as split_mod
from cml_dgl.data.split import draw_negatives, latest_per_user, leave_one_out
from cml_dgl.errors import CmlError

VIEW, CART, BUY = 0, 1, 2


def test_latest_per_user_breaks_time_ties_by_larger_item():
    user = np.array([0, 0, 0, 2, 2])
    item = np.array([5, 9, 7, 1, 3])
    time = np.array([10, 20, 20, 7, 6])
    held = latest_per_user(user, item, time, 4)
    assert held.tolist() == [9, -1, 1, -1]


def test_leave_one_out_holds_out_latest_two_purchases_from_every_behavior():
    #            user item behavior time
    edges = [(0, 1, BUY, 10), (0, 2, BUY, 30), (0, 3, BUY, 20), (0, 2, VIEW, 1), (0, 3, CART, 2),
             (0, 4, VIEW, 50),
             (1, 1, BUY, 5), (1, 1, VIEW, 1), (1, 2, VIEW, 9),      # one purchase: test only
             (2, 4, VIEW, 3)]                                        # no purchase: no test
    u, i, b, t = (np.array(c) for c in zip(*edges))
    keep, valid, test = leave_one_out(u, i, b, t, n_users=3, target=BUY, valid=True)
    assert test.tolist() == [[0, 2], [1, 1]]
    assert valid.tolist() == [[0, 3]]
    kept = sorted(zip(u[keep].tolist(), i[keep].tolist(), b[keep].tolist()))
    assert kept == [(0, 1, BUY), (0, 4, VIEW), (1, 2, VIEW), (2, 4, VIEW)]
    keep2, valid2, test2 = leave_one_out(u, i, b, t, n_users=3, target=BUY, valid=False)
    assert valid2.shape == (0, 2) and test2.tolist() == test.tolist()
    assert (0, 3, CART) in set(zip(u[keep2].tolist(), i[keep2].tolist(), b[keep2].tolist()))


def _exclude(pairs_, n_items):
    return np.unique(np.array([u * n_items + i for u, i in pairs_], dtype=np.int64))


def test_negatives_avoid_purchases_repeat_nothing_and_follow_the_seed():
    rng = np.random.default_rng(0)
    n_items, n_users = 400, 300
    bought = [(u, int(i)) for u in range(n_users) for i in rng.choice(n_items, 30, replace=False)]
    exclude = _exclude(bought, n_items)
    users = np.arange(n_users)
    neg = draw_negatives(users, exclude, n_items, 99, np.random.default_rng(7))
    assert neg.shape == (n_users, 99) and neg.dtype == np.int32
    bought_by = {}
    for u, i in bought:
        bought_by.setdefault(u, set()).add(i)
    for u in range(n_users):
        row = set(neg[u].tolist())
        assert len(row) == 99
        assert not row & bought_by[u]
    again = draw_negatives(users, exclude, n_items, 99, np.random.default_rng(7))
    np.testing.assert_array_equal(neg, again)
    other = draw_negatives(users, exclude, n_items, 99, np.random.default_rng(8))
    assert (neg != other).any()


def test_negatives_are_uniform_over_eligible_items():
    n_items, n_users, n = 50, 4000, 10
    exclude = _exclude([(u, 0) for u in range(n_users)], n_items)  # item 0 bought by everyone
    neg = draw_negatives(np.arange(n_users), exclude, n_items, n, np.random.default_rng(3))
    counts = np.bincount(neg.ravel(), minlength=n_items)
    assert counts[0] == 0
    expected = n_users * n / (n_items - 1)
    chi2 = float((((counts[1:] - expected) ** 2) / expected).sum())
    assert chi2 < 100, f"chi-square {chi2:.1f} with 48 degrees of freedom: not uniform"


def test_exact_fallback_when_rejection_stalls(monkeypatch):
    monkeypatch.setattr(split_mod, "_MAX_ROUNDS", 1)
    calls = []
    exact = split_mod._exact_rows
    monkeypatch.setattr(split_mod, "_exact_rows", lambda u, *a: calls.append(len(u)) or exact(u, *a))
    n_items = 101
    exclude = _exclude([(0, 3), (1, 100)], n_items)  # each user has exactly 100 eligible items
    neg = draw_negatives(np.array([0, 1]), exclude, n_items, 99, np.random.default_rng(0))
    assert all(len(set(row)) == 99 for row in neg.tolist())
    assert 3 not in neg[0] and 100 not in neg[1]
    assert neg.min() >= 0 and neg.max() < n_items
    assert calls == [2], "both rows went through the exact draw"


def test_user_with_too_few_eligible_items_is_an_error():
    n_items = 100
    exclude = _exclude([(1, 5), (1, 6)], n_items)
    with pytest.raises(CmlError, match=r"user 1 has only 98 eligible negative items .* 99 are needed"):
        draw_negatives(np.array([0, 1]), exclude, n_items, 99, np.random.default_rng(0))


def _edges(rows):
    return tuple(np.array(c) for c in zip(*rows))


#            user item behavior time: user 0 buys 2 at 30 (test) and 3 at 20 (validation)
_AUX_EDGES = [(0, 1, BUY, 10), (0, 2, BUY, 30), (0, 3, BUY, 20),
              (0, 2, VIEW, 25), (0, 2, CART, 40), (0, 3, VIEW, 20), (0, 3, CART, 5), (0, 4, VIEW, 1)]


@pytest.mark.parametrize("auxiliary, kept_aux", [
    ("drop", set()),
    ("keep", {(0, 2, VIEW), (0, 2, CART), (0, 3, VIEW), (0, 3, CART)}),
    # strictly earlier than the pair's own purchase: view of 2 at 25 < 30; cart of 3 at 5 < 20;
    # the cart of 2 at 40 and the view of 3 at 20 (a tie) go
    ("before", {(0, 2, VIEW), (0, 3, CART)}),
])
def test_held_out_pairs_auxiliary_edges_follow_the_policy(auxiliary, kept_aux):
    u, i, b, t = _edges(_AUX_EDGES)
    keep, valid, test = leave_one_out(u, i, b, t, n_users=1, target=BUY, auxiliary=auxiliary)
    assert test.tolist() == [[0, 2]] and valid.tolist() == [[0, 3]]
    kept = set(zip(u[keep].tolist(), i[keep].tolist(), b[keep].tolist()))
    assert kept == {(0, 1, BUY), (0, 4, VIEW)} | kept_aux


def test_hold_out_random_is_uniform_seeded_and_only_among_candidates():
    # user 0: purchases 0..3; user 1: purchases 5, 6 but is no candidate; a view of item 2
    u, i, b = _edges([(0, 0, BUY), (0, 1, BUY), (0, 2, BUY), (0, 3, BUY), (0, 2, VIEW),
                      (1, 5, BUY), (1, 6, BUY)])
    cand = u == 0
    picks = [split_mod.hold_out_random(u, i, b, 2, BUY, cand, np.random.default_rng(s))[0]
             for s in range(800)]
    assert all(p[1] == -1 for p in picks)
    counts = np.bincount([p[0] for p in picks], minlength=4)
    assert counts.min() > 150, counts  # each of the 4 purchases about 200 times
    a = split_mod.hold_out_random(u, i, b, 2, BUY, cand, np.random.default_rng(7))
    c = split_mod.hold_out_random(u, i, b, 2, BUY, cand, np.random.default_rng(7))
    assert a[0].tolist() == c[0].tolist() and a[1].tolist() == c[1].tolist()
    held, keep = split_mod.hold_out_random(u, i, b, 2, BUY, cand, np.random.default_rng(0), "keep")
    gone = set(zip(u[~keep].tolist(), i[~keep].tolist(), b[~keep].tolist()))
    assert gone == {(0, int(held[0]), BUY)}
    with pytest.raises(ValueError):
        split_mod.hold_out_random(u, i, b, 2, BUY, cand, np.random.default_rng(0), "before")


def test_pairs_in_behaviors_marks_each_behavior_of_a_pair():
    u, i, b = _edges([(0, 1, VIEW), (0, 1, CART), (1, 2, VIEW), (1, 3, BUY)])
    found = split_mod.pairs_in_behaviors(u, i, b, np.array([[0, 1], [1, 2], [1, 3], [0, 2]]), 4, 3)
    assert found.tolist() == [[True, True, False], [True, False, False], [False, False, True],
                              [False, False, False]]
