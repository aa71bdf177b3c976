"""The training-free baselines against brute-force references: ItemKNN's similarity and scores,
the history rule's order, CascadingRank's power iteration; their config keys."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cml_dgl.errors import CmlError
from cml_dgl.models import registry
from cml_dgl.models.baselines import cascading_rank, itemknn
from cml_dgl.models.baselines.history import History
from cml_dgl.train import config
from tests.conftest import dense_adjacency, make_tiny_dataset


def build(name, ds, *sets):
    return registry.build(ds, config.resolve(overrides=[f"model={name}", *sets]), torch.device("cpu"))



def all_scores(model) -> np.ndarray:
    return model.score_users(torch.arange(model.n_users)).numpy()


# ---------------------------------------------------------------- ItemKNN
def reference_knn(r: np.ndarray, k: int, shrink: float) -> np.ndarray:
    """Cosine with shrinkage, no self-similarity, each row's top k by (similarity desc, index asc)."""
    norm = np.sqrt(r.sum(0))
    co = r.T @ r
    den = norm[:, None] * norm[None, :] + shrink
    sim = np.where(co > 0, co / np.where(den > 0, den, 1), 0.0)
    np.fill_diagonal(sim, 0.0)
    out = np.zeros_like(sim)
    for j in range(len(sim)):
        order = sorted(range(len(sim)), key=lambda i: (-sim[j, i], i))[:k]
        out[j, order] = sim[j, order]
    return out


@pytest.mark.parametrize("k,shrink", [(3, 0.0), (5, 2.5), (100, 0.0)])
def test_itemknn_similarity_and_scores_match_the_dense_reference(k, shrink, monkeypatch):
    ds = make_tiny_dataset(n_users=15, n_items=25, seed=3)
    r = dense_adjacency(ds, range(ds.n_behaviors))
    want = reference_knn(r, k, shrink)
    model = build("itemknn", ds, f"knn_neighbors={k}", f"knn_shrink={shrink}")
    np.testing.assert_allclose(model.similarity.toarray(), want, rtol=1e-6, atol=1e-7)
    assert (model.similarity.getnnz(axis=1) <= min(k, ds.n_items - 1)).all()
    assert model.similarity.diagonal().max() == 0
    np.testing.assert_allclose(all_scores(model), r @ want, rtol=1e-5, atol=1e-6)
    # blocks of 2 items (and of 1) while fitting give the same matrix
    for entries in (2 * ds.n_items, 1):
        monkeypatch.setattr(itemknn, "BLOCK_ENTRIES", entries)
        again = build("itemknn", ds, f"knn_neighbors={k}", f"knn_shrink={shrink}")
        assert (again.similarity != model.similarity).nnz == 0


def test_itemknn_merges_every_behavior_and_shrinkage_orders_by_support():
    ds = make_tiny_dataset(n_users=15, n_items=25, seed=4)
    model = build("itemknn", ds)
    np.testing.assert_array_equal(model.interactions.toarray(), dense_adjacency(ds, range(ds.n_behaviors)))
    shrunk = build("itemknn", ds, "knn_shrink=50.0").similarity.toarray()
    plain = model.similarity.toarray()
    nz = plain > 0
    assert (shrunk[nz] < plain[nz]).all()


# ---------------------------------------------------------------- history
def reference_history_key(ds, behaviors):
    """Per (user, item): (strongest selected behavior + 1 or 0, number of selected behaviors, purchases)."""
    tier = np.zeros((ds.n_users, ds.n_items), dtype=int)
    count = np.zeros_like(tier)
    for h, k in enumerate(behaviors):
        a = dense_adjacency(ds, [k]) > 0
        tier[a] = h + 1
        count += a
    pop = np.bincount(ds.edges(ds.n_behaviors - 1)[1], minlength=ds.n_items)
    return tier, count, pop


@pytest.mark.parametrize("value,behaviors", [("all", [0, 1]), ("cart", [1]), ("view", [0]), ("cart, view", [0, 1])])
def test_history_orders_items_by_behavior_then_count_then_popularity(value, behaviors):
    ds = make_tiny_dataset(n_users=12, n_items=20, seed=5, density=0.4)
    s = all_scores(build("history", ds, f"history_behaviors={value}"))
    tier, count, pop = reference_history_key(ds, behaviors)
    for u in range(ds.n_users):
        keys = [(tier[u, i], count[u, i], pop[i]) for i in range(ds.n_items)]
        for i in range(ds.n_items):
            for j in range(ds.n_items):
                assert (s[u, i] > s[u, j]) == (keys[i] > keys[j]) and (s[u, i] == s[u, j]) == (keys[i] == keys[j])
    assert (tier > 0).any() and (count == 2).any() == (len(behaviors) == 2)
    assert np.array_equal(s, np.round(s))  # integer scores: ties are exact


def test_history_without_auxiliary_behaviors_is_purchase_popularity():
    ds = make_tiny_dataset(n_users=12, n_items=20, seed=6, behaviors=("buy",))
    s = all_scores(build("history", ds))
    pop = np.bincount(ds.edges(0)[1], minlength=ds.n_items)
    for u in range(ds.n_users):
        np.testing.assert_array_equal(np.argsort(np.argsort(s[u], kind="stable"), kind="stable"),
                                      np.argsort(np.argsort(pop, kind="stable"), kind="stable"))


def test_history_behaviors_must_name_auxiliary_behaviors():
    ds = make_tiny_dataset()
    for bad, shown in (("buy", "'buy'"), ("cart,nope", "'nope'"), ('" , "', "' , '")):
        with pytest.raises(CmlError, match=f"history_behaviors: {shown} is not a list of auxiliary behaviors"):
            build("history", ds, f"history_behaviors={bad}")
    assert isinstance(build("history", ds, "history_behaviors=cart"), History)


# ---------------------------------------------------------------- CascadingRank
def reference_cascade(ds, alpha, beta, tol, max_iter):
    """The equations of the CascadingRank docstring, one user at a time, dense float64."""
    out = np.zeros((ds.n_users, ds.n_items))
    gamma = 1 - alpha - beta
    mats = []
    for k in range(ds.n_behaviors):
        a = dense_adjacency(ds, [k])
        du, di = a.sum(1), a.sum(0)
        iu = np.where(du > 0, 1 / np.sqrt(np.maximum(du, 1)), 0)
        ii = np.where(di > 0, 1 / np.sqrt(np.maximum(di, 1)), 0)
        mats.append((iu[:, None] * a * ii[None, :], a / np.maximum(du, 1)[:, None]))
    for u in range(ds.n_users):
        c = None
        for a_hat, query in mats:
            q_u = np.zeros(ds.n_users)
            q_u[u] = 1.0
            q_i = query[u]
            if c is None:
                c = (q_u, q_i)
            r_u, r_i = q_u.copy(), q_i.copy()
            for _ in range(max_iter):
                n_u = gamma * a_hat @ r_i + alpha * q_u + beta * c[0]
                n_i = gamma * a_hat.T @ r_u + alpha * q_i + beta * c[1]
                res = np.abs(n_u - r_u).sum() + np.abs(n_i - r_i).sum()
                r_u, r_i = n_u, n_i
                if res <= tol:
                    break
            c = (r_u, r_i)
        out[u] = c[1]
    return out


@pytest.mark.parametrize("alpha,beta,tol,max_iter", [(0.0, 0.9, 1e-4, 100), (0.3, 0.5, 1e-6, 100),
                                                     (0.2, 0.2, 0.0, 3), (0.0, 0.0, 0.0, 4)])
def test_cascading_rank_matches_the_reference_iteration(alpha, beta, tol, max_iter):
    ds = make_tiny_dataset(n_users=14, n_items=22, seed=7)
    model = build("cascading-rank", ds, f"cascade_alpha={alpha}", f"cascade_beta={beta}",
                  f"cascade_tolerance={tol}", f"cascade_max_iter={max_iter}")
    want = reference_cascade(ds, alpha, beta, tol, max_iter)
    np.testing.assert_allclose(all_scores(model), want, rtol=1e-4, atol=1e-6)


def test_cascading_rank_scores_do_not_depend_on_the_users_around_them(monkeypatch):
    ds = make_tiny_dataset(n_users=30, n_items=25, seed=8)
    model = build("cascading-rank", ds)
    whole = all_scores(model)
    one_by_one = np.concatenate([model.score_users(torch.tensor([u])).numpy() for u in range(ds.n_users)])
    assert np.array_equal(whole, one_by_one)
    monkeypatch.setattr(cascading_rank, "CHUNK_ENTRIES", 3 * (ds.n_users + ds.n_items))
    shuffled = np.random.default_rng(0).permutation(ds.n_users)
    assert np.array_equal(model.score_users(torch.from_numpy(shuffled)).numpy(), whole[shuffled])


def test_the_cascade_carries_earlier_behaviors_into_the_target_only_through_beta():
    """beta = 0: the target's walk restarts to its own query alone, so the earlier behaviors do not
    matter (the scores are those of the target graph alone); beta > 0: every item the user viewed
    gets score from the view walk."""
    ds = make_tiny_dataset(n_users=14, n_items=22, seed=9)
    target = ds.train_behavior == ds.n_behaviors - 1
    buy_only = dataclasses.replace(ds, behaviors=["buy"], train_user=ds.train_user[target],
                                   train_item=ds.train_item[target],
                                   train_behavior=np.zeros(int(target.sum()), np.int8),
                                   train_time=ds.train_time[target])
    no_cascade = ("cascade_alpha=0.5", "cascade_beta=0.0")
    np.testing.assert_array_equal(all_scores(build("cascading-rank", ds, *no_cascade)),
                                  all_scores(build("cascading-rank", buy_only, *no_cascade)))
    s = all_scores(build("cascading-rank", ds))
    assert not np.allclose(s, all_scores(build("cascading-rank", buy_only)))
    viewed = dense_adjacency(ds, [0]) > 0
    assert (s >= 0).all() and (s[viewed] > 0).all()


@pytest.mark.parametrize("sets,message", [
    (["cascade_alpha=0.6", "cascade_beta=0.5"], "cascade_alpha \\+ cascade_beta must be at most 1"),
    (["cascade_alpha=1.5"], "cascade_alpha must be in \\[0, 1\\]"),
    (["cascade_beta=-0.1"], "cascade_beta must be in \\[0, 1\\]"),
    (["cascade_max_iter=0"], "cascade_max_iter must be an integer in \\[1, 1000000\\]"),
    (["cascade_tolerance=-1.0"], "cascade_tolerance must be >= 0"),
    (["knn_neighbors=0"], "knn_neighbors must be an integer in \\[1, "),
    (["knn_shrink=-1.0"], "knn_shrink must be >= 0"),
])
def test_the_baselines_config_keys_are_validated(sets, message):
    with pytest.raises(CmlError, match=message):
        config.resolve(overrides=sets)
