"""Evaluation and top-k read a model's scores through one Scorer: embeddings' dot products, or
score rows computed directly (ScoredRecommender), chunk by chunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cml_dgl.errors import CmlError
from cml_dgl.eval.evaluate import as_scorer, evaluate, full_rank_bounds, sampled_rank_bounds
from cml_dgl.models import base
from cml_dgl.models.base import EmbeddingScorer, ScoredRecommender
from cml_dgl.models.baselines import MF
from tests.conftest import make_tiny_dataset

KS = (1, 5, 10)


class TableScores(ScoredRecommender):
    """A model scored by a fixed table (small integers: frequent exact ties)."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.table = torch.from_numpy(table.astype(np.float32))
        self.n_users, self.n_items = table.shape
        self.calls: list[int] = []

    def score_users(self, users):
        self.calls.append(len(users))
        return self.table[users]


def table_for(ds, seed=0):
    return np.random.default_rng(seed).integers(0, 4, size=(ds.n_users, ds.n_items))


def test_a_scored_model_evaluates_as_its_dense_score_matrix():
    ds = make_tiny_dataset(n_users=25, n_items=30, seed=4)
    table = table_for(ds)
    model = TableScores(table)
    dense = (table.astype(np.float32), np.eye(ds.n_items, dtype=np.float32))
    for protocol in ("sampled", "full"):
        for mask in ("target", "all"):
            want = evaluate(ds, dense, protocol=protocol, ks=KS, mask=mask)
            assert evaluate(ds, model, protocol=protocol, ks=KS, mask=mask) == want
            for elems in (1, 31, 95):  # one user per chunk, one, three
                assert evaluate(ds, model, protocol=protocol, ks=KS, mask=mask, max_chunk_elems=elems) == want
    model.calls.clear()
    sampled_rank_bounds(model, ds.test, ds.test_negatives, max_chunk_elems=3 * ds.n_items)
    assert max(model.calls) == 3, "a scored model's sampled chunk is sized by its full rows"
    g, t = full_rank_bounds(model, ds.test, None)
    row = table[ds.test[:, 0]]
    pos = table[ds.test[:, 0], ds.test[:, 1]]
    np.testing.assert_array_equal(g, (row > pos[:, None]).sum(1))
    np.testing.assert_array_equal(t, (row == pos[:, None]).sum(1) - 1)


def test_score_and_recommend_of_a_scored_model_read_its_rows():
    ds = make_tiny_dataset(n_users=25, n_items=30, seed=5)
    table = table_for(ds, seed=1)
    model = TableScores(table)
    users = torch.arange(ds.n_users)
    cands = torch.from_numpy(np.random.default_rng(0).integers(0, ds.n_items, (ds.n_users, 6)))
    np.testing.assert_array_equal(model.score(users, cands).numpy(), np.take_along_axis(table, cands.numpy(), 1))
    assert torch.equal(model.score(users, cands[:, 0]), model.score(users, cands)[:, 0])
    exclude = ds.csr(ds.n_behaviors - 1)
    items, scores = model.recommend(users, 5, exclude=exclude, chunk=4)
    masked = np.where(exclude.toarray() > 0, -np.inf, table)
    for u in range(ds.n_users):
        order = sorted(range(ds.n_items), key=lambda i: (-masked[u, i], i))[:5]  # ties by item index
        assert items[u].tolist() == order
        np.testing.assert_array_equal(scores[u].numpy(), masked[u, order])


def test_embeddings_of_a_scored_model_are_exact_and_bounded(monkeypatch):
    ds = make_tiny_dataset(n_users=12, n_items=20)
    model = TableScores(table_for(ds))
    user, item = model.embeddings()
    assert user.shape == (12, 20) and item.shape == (20, 20)
    assert torch.equal(user @ item.T, model.table)
    monkeypatch.setattr(base, "DENSE_EMBEDDINGS_MAX", 12 * 20 + 20 * 20 - 1)
    with pytest.raises(CmlError, match="TableScores has no low-rank embeddings"):
        model.embeddings()
    assert evaluate(ds, model, protocol="full", ks=KS)  # evaluation never needs them


def test_as_scorer_takes_models_scorers_and_embedding_pairs():
    ds = make_tiny_dataset()
    mf = MF(ds.n_users, ds.n_items, dim=4)
    s = as_scorer(mf)
    assert isinstance(s, EmbeddingScorer) and torch.equal(s.user, mf.user_emb.weight)
    assert as_scorer(s) is s
    table = TableScores(table_for(ds))
    assert as_scorer(table) is table
    ue = np.ones((ds.n_users, 2), np.float64)
    pair = as_scorer((ue, np.ones((ds.n_items, 2))))
    assert pair.user.dtype == torch.float32 and pair.entries_per_user(10) == 20
    assert evaluate(ds, mf) == evaluate(ds, (mf.user_emb.weight, mf.item_emb.weight))
    with pytest.raises(CmlError, match="cannot rank with a str"):
        evaluate(ds, "model")
    with pytest.raises(CmlError, match="sequence of 3"):
        evaluate(ds, (ue, ue, ue))
    with pytest.raises(CmlError, match="another dataset"):
        evaluate(ds, TableScores(np.zeros((ds.n_users, ds.n_items + 1))))


def test_a_non_finite_positive_score_is_refused():
    ds = make_tiny_dataset()
    table = table_for(ds).astype(np.float32)
    u, i = ds.test[3]
    table[u, i] = np.nan
    for protocol in ("sampled", "full"):
        with pytest.raises(CmlError, match="pair 3's positive as nan"):
            evaluate(ds, TableScores(table), protocol=protocol)
