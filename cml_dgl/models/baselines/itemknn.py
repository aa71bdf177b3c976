"""ItemKNN: item-item cosine neighbours over every behavior merged, training-free."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from cml_dgl.errors import CmlError
from cml_dgl.graph.build import prepare_relations
from cml_dgl.models.base import ScoredRecommender
from cml_dgl.models.topk import exact_topk

if TYPE_CHECKING:
    import scipy.sparse as sp

BLOCK_ENTRIES = 1 << 24
"""Similarity entries (float64) computed at once while fitting: a block of items against all."""


def merged_interactions(ds: Any) -> sp.csr_matrix:
    """Binary U x I csr (float32) of every behavior's training edges merged: :math:`R_{ui} = 1`
    when u touched i in any behavior."""
    import scipy.sparse as sp

    rel = prepare_relations(ds.n_users, ds.n_items, [(ds.train_user, ds.train_item)], ["all"])
    u, i = rel.users[0], rel.items[0]
    return sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)), shape=(ds.n_users, ds.n_items))


def item_similarity(r: sp.csr_matrix, neighbors: int, shrink: float) -> sp.csr_matrix:
    """I x I csr (float32) of each item's ``neighbors`` most similar other items:

    .. math::  sim(i, j) = \\frac{\\langle r_i, r_j \\rangle}{\\lVert r_i \\rVert \\lVert r_j \\rVert + shrink},
               \\quad i \\ne j

    with :math:`r_i` the item's column of the binary ``r``. Row j keeps its top ``neighbors``
    (equal similarities: lower item index first) with a positive similarity. Computed in blocks
    of items (:data:`BLOCK_ENTRIES` entries at once) by sparse products; no loop over items.
    """
    import scipy.sparse as sp

    n_items = r.shape[1]
    rt = r.T.tocsr()
    norm = np.sqrt(np.asarray(rt.sum(1), dtype=np.float64).ravel())
    k = min(neighbors, max(n_items - 1, 1))
    step = max(1, BLOCK_ENTRIES // max(1, n_items))
    rows, cols, vals = [], [], []
    for lo in range(0, n_items, step):
        hi = min(lo + step, n_items)
        co = (rt[lo:hi] @ r).toarray().astype(np.float64)  # co-occurrence counts <r_i, r_j>
        den = norm[lo:hi, None] * norm[None, :] + shrink
        sim = np.divide(co, den, out=np.zeros_like(co), where=co > 0)
        sim[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        idx, val = exact_topk(torch.from_numpy(sim), k)
        val, idx = val.numpy(), idx.numpy()
        keep = val > 0
        rows.append(np.repeat(np.arange(lo, hi), keep.sum(1)))
        cols.append(idx[keep])
        vals.append(val[keep])
    rows_a, cols_a, vals_a = (np.concatenate(x) for x in (rows, cols, vals))
    return sp.csr_matrix((vals_a.astype(np.float32), (rows_a, cols_a)), shape=(n_items, n_items))


class ItemKNN(ScoredRecommender):
    """Item-based nearest neighbours (Sarwar et al. 2001; Deshpande and Karypis 2004) on the
    binary user-item matrix R of every behavior merged (:func:`merged_interactions`):

    .. math::  s(u, i) = \\sum_{j : R_{uj} = 1} S_{ji}, \\qquad S = \\text{top-}k\\text{ rows of }
               sim(j, i) = \\frac{\\langle r_j, r_i \\rangle}{\\lVert r_j \\rVert \\lVert r_i \\rVert + shrink}

    (:func:`item_similarity`; no self-similarity), i.e. the rows of the chunk's users are
    :math:`R_{users} S`, one sparse product. Config: ``knn_neighbors`` (k), ``knn_shrink``;
    defaults k = 100, shrink 0 (RecBole's). Not trained: the similarity is computed when the
    model is built, on the CPU, and rebuilt from the dataset when a run is reopened.
    """

    def __init__(self, interactions: sp.csr_matrix, neighbors: int = 100, shrink: float = 0.0):
        super().__init__()
        if neighbors < 1:
            raise CmlError(f"knn_neighbors must be positive, got {neighbors}")
        if shrink < 0:
            raise CmlError(f"knn_shrink must be >= 0, got {shrink}")
        self.interactions = interactions.tocsr().astype(np.float32)
        self.n_users, self.n_items = self.interactions.shape
        self.neighbors, self.shrink = neighbors, shrink
        self.similarity = item_similarity(self.interactions, neighbors, shrink)

    @classmethod
    def from_config(cls, ds: Any, cfg: dict[str, Any], device: torch.device) -> "ItemKNN":
        return cls(merged_interactions(ds), cfg["knn_neighbors"], cfg["knn_shrink"])

    def score_users(self, users: Tensor) -> Tensor:
        rows = self.interactions[users.cpu().numpy()] @ self.similarity
        return torch.from_numpy(rows.toarray().astype(np.float32, copy=False))
