"""The contract every recommender implements: embeddings, scores, bulk top-k, and (when trained)
the objective of one batch.

Every model scores a user-item pair by the inner product of their embeddings,

.. math::  s(u, i) = \\langle e_u, e_i \\rangle, \\qquad e_u = E_U[u] \\in R^d,\\; e_i = E_I[i] \\in R^d,

so one evaluator, one exporter and one top-k serve them all. A model is built from a dataset and
a resolved config by :meth:`Recommender.from_config`; :mod:`cml_dgl.models.registry` names each
model with its class, config defaults and training strategy.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from cml_dgl.errors import CmlError

class Recommender(nn.Module):
    """Base class of every model (CML and the baselines).

    Subclasses implement :meth:`embeddings` and :meth:`from_config`; trainable ones also
    :meth:`loss` (the objective of one batch) and, for the pairwise strategy,
    :meth:`training_edges`. :meth:`score` and :meth:`recommend` derive from :meth:`embeddings`.
    """

    #: True where the model has behavior-specific views (``forward()`` returns them; export
    #: writes them with ``--per-behavior``)
    has_behavior_views: ClassVar[bool] = False

    @classmethod
    def from_config(cls, ds: Any, cfg: dict[str, Any], device: torch.device, **options: Any) -> "Recommender":
        """Build the model for dataset ``ds`` from a resolved config, on ``device``."""
        raise NotImplementedError

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """``(user (U, d), item (I, d))``: the embeddings that :meth:`score` multiplies."""
        raise NotImplementedError

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective of one batch: ``(total, parts)``, the parts detached for logging."""
        raise CmlError(f"{type(self).__name__} is not trained; it has no training objective")

    def training_edges(self, ds: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(users, items)`` int64: the positives of a pairwise (BPR) model."""
        raise CmlError(f"{type(self).__name__} has no pairwise training positives")

    @torch.no_grad()
    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """:math:`s(u, i)` for ``users`` (n,) with ``items`` (n,) or (n, m) candidates."""
        user, item = self.embeddings()
        return score_rows(user, item, users, items)

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


def score_rows(user: Tensor, item: Tensor, users: Tensor, items: Tensor) -> Tensor:
    """:math:`\\langle user[u], item[i] \\rangle`; ``users`` (n,) with ``items`` (n,) or (n, m)."""
    u = user.index_select(0, users)
    i = item[items]
    if i.dim() == u.dim() + 1:
        u = u.unsqueeze(-2)
    return (u * i).sum(-1)
