"""The contract every recommender implements: a scorer of users against items, bulk top-k, and
(when trained) the objective of one batch.

Most models score a user-item pair by the inner product of their embeddings,

.. math::  s(u, i) = \\langle e_u, e_i \\rangle, \\qquad e_u = E_U[u] \\in R^d,\\; e_i = E_I[i] \\in R^d,

and their :meth:`Recommender.scorer` is an :class:`EmbeddingScorer` over one encoder pass. Models
whose scores are not such a product (item-item neighbours, graph walks, rules) derive from
:class:`ScoredRecommender` and compute the rows :math:`s(u, \\cdot)` of a chunk of users directly.
Either way the evaluator, the exporter and one top-k read scores through the same
:class:`Scorer` interface, chunk by chunk, never a users x items matrix at once.

A model is built from a dataset and a resolved config by :meth:`Recommender.from_config`;
:mod:`cml_dgl.models.registry` names each model with its class, config defaults and training
strategy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from cml_dgl.errors import CmlError

if TYPE_CHECKING:  # scipy is imported where an exclusion matrix is read
    import scipy.sparse as sp

DEFAULT_CHUNK = 2048
SCORE_ROWS_ENTRIES = 1 << 24
"""Score entries a :class:`ScoredRecommender` holds at once while reading candidates (64 MiB)."""

DENSE_EMBEDDINGS_MAX = 1 << 26
"""Entries (U·I + I·I) above which a :class:`ScoredRecommender` refuses to write its scores out
as dense embeddings (64 Mi float32 = 256 MiB)."""


class Scorer(Protocol):
    """The scores of one model state, read in chunks of users (what evaluation and top-k need).

    ``score_users(users)`` gives the rows :math:`s(u, \\cdot)` (n, I) of ``users`` (n,) int64;
    ``score(users, items)`` the scores of ``items`` (n,) or (n, m) candidates. Each user's row is
    the same whatever other users share its chunk. ``entries_per_user(m)`` is the number of
    float32 entries one user's scoring of ``m`` candidates holds in memory (the evaluator sizes
    its chunks by it); ``device`` is where the scores are returned.
    """

    n_users: int
    n_items: int

    @property
    def device(self) -> torch.device: ...

    def score_users(self, users: Tensor) -> Tensor: ...

    def score(self, users: Tensor, items: Tensor) -> Tensor: ...

    def entries_per_user(self, n_candidates: int) -> int: ...


class EmbeddingScorer:
    """:math:`s(u, i) = \\langle user[u], item[i] \\rangle` of fixed embeddings (U, d) and (I, d),
    on the device of ``user``; nothing is copied or cast (see :func:`embedding_scorer` for that)."""

    def __init__(self, user: Tensor, item: Tensor) -> None:
        self.user, self.item = user, item
        self.n_users, self.n_items = user.shape[0], item.shape[0]

    @property
    def device(self) -> torch.device:
        return self.user.device

    def score_users(self, users: Tensor) -> Tensor:
        return self.user.index_select(0, users) @ self.item.T

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        return score_rows(self.user, self.item, users, items)

    def entries_per_user(self, n_candidates: int) -> int:
        return n_candidates * self.user.shape[1]


def embedding_scorer(user_emb: Any, item_emb: Any) -> EmbeddingScorer:
    """An :class:`EmbeddingScorer` of tensors or arrays, detached, float32, both on the device of
    ``user_emb``; refuses shapes that do not multiply and non-finite values."""
    u = user_emb.detach() if isinstance(user_emb, Tensor) else torch.from_numpy(np.asarray(user_emb))
    i = item_emb.detach() if isinstance(item_emb, Tensor) else torch.from_numpy(np.asarray(item_emb))
    u = u.to(dtype=torch.float32)
    i = i.to(device=u.device, dtype=torch.float32)
    if u.ndim != 2 or i.ndim != 2 or u.shape[1] != i.shape[1]:
        raise CmlError(f"embeddings must be (users, d) and (items, d) with the same d, "
                       f"got {tuple(u.shape)} and {tuple(i.shape)}")
    if not (torch.isfinite(u).all() and torch.isfinite(i).all()):
        raise CmlError("embeddings contain NaN or infinite values (did training diverge?)")
    return EmbeddingScorer(u, i)


class Recommender(nn.Module):
    """Base class of every model (CML and the baselines).

    Subclasses implement :meth:`embeddings` and :meth:`from_config`; trainable ones also
    :meth:`loss` (the objective of one batch) and, for the pairwise strategy,
    :meth:`training_edges`. :meth:`scorer` (one encoder pass), :meth:`score`,
    :meth:`score_users` and :meth:`recommend` derive from :meth:`embeddings`.
    """

    #: True where the model has behavior-specific views (``forward()`` returns them; export
    #: writes them with ``--per-behavior``)
    has_behavior_views: ClassVar[bool] = False

    @classmethod
    def from_config(cls, ds: Any, cfg: dict[str, Any], device: torch.device, **options: Any) -> "Recommender":
        """Build the model for dataset ``ds`` from a resolved config, on ``device``."""
        raise NotImplementedError

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """``(user (U, d), item (I, d))``: the embeddings whose dot products are the scores."""
        raise NotImplementedError

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective of one batch: ``(total, parts)``, the parts detached for logging."""
        raise CmlError(f"{type(self).__name__} is not trained; it has no training objective")

    def draw_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The config the training draws are made with: ``cfg``, or a copy a model adjusts."""
        return cfg

    def training_edges(self, ds: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(users, items)`` int64: the positives of a pairwise (BPR) model."""
        raise CmlError(f"{type(self).__name__} has no pairwise training positives")

    @torch.no_grad()
    def scorer(self) -> Scorer:
        """The scores of the model as it is now: one encoder pass, then any number of chunks."""
        return EmbeddingScorer(*self.embeddings())

    @torch.no_grad()
    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """:math:`s(u, i)` for ``users`` (n,) with ``items`` (n,) or (n, m) candidates."""
        return self.scorer().score(users, items)

    @torch.no_grad()
    def score_users(self, users: Tensor) -> Tensor:
        """:math:`s(u, \\cdot)`: the (n, I) rows of ``users`` (n,) against every item."""
        return self.scorer().score_users(users)

    @torch.no_grad()
    def recommend(self, users: Tensor | np.ndarray, k: int, exclude: Any = None,
                  chunk: int | None = None) -> tuple[Tensor, Tensor]:
        """Top-``k`` items of each of ``users``: ``(items (n, k'), scores (n, k'))``, best first.

        One encoder pass, then scores chunk by chunk (:func:`cml_dgl.models.topk.recommend_topk`).
        ``exclude`` (a U x I sparse matrix) removes each user's non-zero items; ``k' = min(k, I)``,
        and slots past a user's last admissible item hold item -1 with score -inf. Equal scores
        rank by item index.
        """
        from cml_dgl.models.topk import recommend_topk

        user, item = self.embeddings()
        return recommend_topk(user, item, users, k, exclude=exclude, chunk=chunk)


class ScoredRecommender(Recommender):
    """A model that computes its score rows directly, not as a product of low-rank embeddings
    (ItemKNN, CascadingRank, the history rule). It is its own :class:`Scorer`: subclasses set
    ``n_users``, ``n_items`` and implement :meth:`score_users` (float32, on the CPU), computed
    for a chunk of users at a time; :meth:`score` reads candidates from those rows.

    :meth:`embeddings` exists for the exporter and the contract: the exact factorisation
    :math:`S = S \\cdot I_I`, i.e. user rows = the users' full score rows (U, I) and item rows =
    the identity (I, I), so that :math:`\\langle e_u, e_i \\rangle = s(u, i)`. It is dense, so it
    is refused with a :class:`CmlError` when U·I + I·I exceeds :data:`DENSE_EMBEDDINGS_MAX`.
    """

    n_users: int
    n_items: int

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def scorer(self) -> Scorer:
        return self

    def score_users(self, users: Tensor) -> Tensor:
        raise NotImplementedError

    def entries_per_user(self, n_candidates: int) -> int:
        return self.n_items  # a candidate is read from the user's full row

    @torch.no_grad()
    def recommend(self, users: Tensor | np.ndarray, k: int, exclude: Any = None,
                  chunk: int | None = None) -> tuple[Tensor, Tensor]:
        """As :meth:`Recommender.recommend`, over this model's score rows."""
        from cml_dgl.models.topk import scorer_topk

        return scorer_topk(self, users, k, exclude=exclude, chunk=chunk)

    @torch.no_grad()
    def score(self, users: Tensor, items: Tensor) -> Tensor:
        users = users.cpu()
        items = items.cpu()
        flat = items.dim() == 1
        cols = items.unsqueeze(1) if flat else items
        step = max(1, SCORE_ROWS_ENTRIES // max(1, self.n_items))
        out = [self.score_users(users[lo:lo + step]).gather(1, cols[lo:lo + step])
               for lo in range(0, len(users), step)]
        s = torch.cat(out) if out else torch.zeros(cols.shape, dtype=torch.float32)
        return s[:, 0] if flat else s

    @torch.no_grad()
    def embeddings(self) -> tuple[Tensor, Tensor]:
        n = self.n_users * self.n_items + self.n_items ** 2
        if n > DENSE_EMBEDDINGS_MAX:
            raise CmlError(f"{type(self).__name__} has no low-rank embeddings: its scores as dense "
                           f"embeddings would take {self.n_users:,} x {self.n_items:,} + {self.n_items:,}^2 "
                           f"entries (more than {DENSE_EMBEDDINGS_MAX:,}); use its scores "
                           "(cml evaluate, cml recommend) instead")
        users = torch.arange(self.n_users)
        rows = [self.score_users(users[lo:lo + DEFAULT_CHUNK]) for lo in range(0, self.n_users, DEFAULT_CHUNK)]
        return torch.cat(rows), torch.eye(self.n_items)


def score_rows(user: Tensor, item: Tensor, users: Tensor, items: Tensor) -> Tensor:
    """:math:`\\langle user[u], item[i] \\rangle`; ``users`` (n,) with ``items`` (n,) or (n, m)."""
    u = user.index_select(0, users)
    i = item[items]
    if i.dim() == u.dim() + 1:
        u = u.unsqueeze(-2)
    return (u * i).sum(-1)
