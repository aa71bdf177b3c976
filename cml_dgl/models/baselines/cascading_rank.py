"""CascadingRank: training-free personalised ranking on the behavior graphs in cascade order."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from cml_dgl.errors import CmlError
from cml_dgl.graph.build import edge_weights, prepare_relations
from cml_dgl.models.base import ScoredRecommender

CHUNK_ENTRIES = 1 << 23
"""Float32 entries of one ranking vector block ((U + I) x users) in the power iteration: about
eight such blocks are alive at once (64 MiB each at this size)."""


class BehaviorGraph:
    """One behavior's matrices: :math:`\\tilde A = D_u^{-1/2} A D_i^{-1/2}` (U x I, float32 csr)
    and its transpose, and the item query :math:`Q = D_u^{-1} A` (row u: the user's items, each
    1 / deg(u)); a node without edges keeps zero rows."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int):
        import scipy.sparse as sp

        shape = (n_users, n_items)
        self.a = sp.csr_matrix((edge_weights(users, items, n_users, n_items, "sym").astype(np.float32),
                                (users, items)), shape=shape)
        self.a_t = self.a.T.tocsr()
        deg = np.bincount(users, minlength=n_users).astype(np.float64)
        self.query = sp.csr_matrix(((1.0 / deg[users]).astype(np.float32), (users, items)), shape=shape)


class CascadingRank(ScoredRecommender):
    """CascadingRank (Ko, Jeon and Jung, "Personalized Ranking on Cascading Behavior Graphs for
    Accurate Multi-Behavior Recommendation", arXiv:2502.11335, 2025): a random walk with restart
    on each behavior's user-item graph in the cascade order of the dataset (view -> cart -> buy,
    the target last), restarting to the user's query and to the previous behavior's ranking.

    For user u and behavior k, with :math:`\\tilde A_k = D_u^{-1/2} A_k D_i^{-1/2}`, the query
    :math:`q_k = [e_u ; A_k^T e_u / deg_k(u)]` (the user's node, and its behavior-k items with
    equal weights summing to 1) and :math:`\\gamma = 1 - \\alpha - \\beta`, the user-side and
    item-side scores are iterated from :math:`r^{(0)} = q_k`:

    .. math::
        r_U^{(t+1)} &= \\gamma \\tilde A_k r_I^{(t)} + \\alpha q_{k,U} + \\beta c_U \\\\
        r_I^{(t+1)} &= \\gamma \\tilde A_k^T r_U^{(t)} + \\alpha q_{k,I} + \\beta c_I

    until :math:`\\lVert r^{(t+1)} - r^{(t)} \\rVert_1 \\le` ``cascade_tolerance`` or
    ``cascade_max_iter`` steps, where c is the converged r of the previous behavior (of the first
    behavior: its own query q_1). The target behavior's item scores :math:`r_I` are the ranking:
    :math:`s(u, \\cdot) = r_I`. Config: ``cascade_alpha`` (α, query fitting),
    ``cascade_beta`` (β, cascading alignment), ``cascade_tolerance``, ``cascade_max_iter``;
    defaults 0.0, 0.9, 1e-4, 100: the authors' code's defaults, their setting for MB-CGCN's Tmall
    split (their "Taobao").

    Vectorised over users: a block of users is iterated at once as the columns of
    (U + I) x n float32 matrices (:data:`CHUNK_ENTRIES` per block), by sparse-dense products on
    the CPU. Each user stops at its own convergence (the authors' code stops a batch when its
    mean residual is below the tolerance), so a user's scores do not depend on the other users
    of its block; never a users x items matrix beyond the chunk asked for. Not trained.
    """

    def __init__(self, graphs: Sequence[BehaviorGraph], alpha: float = 0.0, beta: float = 0.9,
                 tolerance: float = 1e-4, max_iter: int = 100):
        super().__init__()
        if not graphs:
            raise CmlError("cascading-rank needs at least one behavior graph")
        if not (0 <= alpha <= 1 and 0 <= beta <= 1 and alpha + beta <= 1):
            raise CmlError(f"cascade_alpha and cascade_beta must lie in [0, 1] with a sum of at most 1, "
                           f"got {alpha} and {beta}")
        if max_iter < 1 or tolerance < 0:
            raise CmlError(f"cascade_max_iter must be positive and cascade_tolerance >= 0, got {max_iter}, {tolerance}")
        self.graphs = list(graphs)
        self.n_users, self.n_items = self.graphs[0].a.shape
        self.alpha, self.beta, self.gamma = alpha, beta, 1.0 - alpha - beta
        self.tolerance, self.max_iter = tolerance, max_iter

    @classmethod
    def from_config(cls, ds: Any, cfg: dict[str, Any], device: torch.device) -> "CascadingRank":
        rel = prepare_relations(ds.n_users, ds.n_items, [ds.edges(k) for k in range(ds.n_behaviors)], ds.behaviors)
        graphs = [BehaviorGraph(u, i, ds.n_users, ds.n_items) for u, i in zip(rel.users, rel.items)]
        return cls(graphs, cfg["cascade_alpha"], cfg["cascade_beta"], cfg["cascade_tolerance"],
                   cfg["cascade_max_iter"])

    def score_users(self, users: Tensor) -> Tensor:
        users_np = users.cpu().numpy().astype(np.int64)
        step = max(1, CHUNK_ENTRIES // (self.n_users + self.n_items))
        out = np.empty((len(users_np), self.n_items), dtype=np.float32)
        for lo in range(0, len(users_np), step):
            out[lo:lo + step] = self._cascade(users_np[lo:lo + step]).T
        return torch.from_numpy(out)

    def _cascade(self, users: np.ndarray) -> np.ndarray:
        """Item scores (I x n) of the target behavior for ``users`` (n,), one column each."""
        n = len(users)
        cols = np.arange(n)
        c_u = c_i = None
        for g in self.graphs:
            q_u = np.zeros((self.n_users, n), dtype=np.float32)
            q_u[users, cols] = 1.0
            q_i = np.ascontiguousarray(g.query[users].toarray().T)
            if c_u is None:
                c_u, c_i = q_u, q_i
            c_u, c_i = self._walk(g, q_u, q_i, c_u, c_i)
        return c_i

    def _walk(self, g: BehaviorGraph, q_u: np.ndarray, q_i: np.ndarray, c_u: np.ndarray,
              c_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The power iteration of one behavior; each column stops once its L1 residual is at most
        the tolerance (or after ``max_iter`` steps)."""
        r_u, r_i = q_u.copy(), q_i.copy()
        restart_u = self.alpha * q_u + self.beta * c_u
        restart_i = self.alpha * q_i + self.beta * c_i
        active = np.arange(q_u.shape[1])
        for _ in range(self.max_iter):
            if len(active) == 0:
                break
            x_u, x_i = r_u[:, active], r_i[:, active]
            new_u = self.gamma * (g.a @ x_i) + restart_u[:, active]
            new_i = self.gamma * (g.a_t @ x_u) + restart_i[:, active]
            residual = np.abs(new_u - x_u).sum(0, dtype=np.float64) + np.abs(new_i - x_i).sum(0, dtype=np.float64)
            r_u[:, active], r_i[:, active] = new_u, new_i
            active = active[residual > self.tolerance]
        return r_u, r_i
