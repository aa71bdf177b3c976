"""LightGCN on one user-item relation: the target behavior, or every behavior merged."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cml_dgl.errors import CmlError
from cml_dgl.graph.backends import propagator_for_dataset
from cml_dgl.models.baselines.mf import PairwiseRecommender, bpr_objective


class LightGCN(PairwiseRecommender):
    """LightGCN (He et al. 2020) on one user-item relation with symmetric normalisation.

    .. math::  E_U^{l+1} = \\hat A E_I^{l}, \\quad E_I^{l+1} = \\hat A^T E_U^{l}, \\quad
               \\hat A = D_u^{-1/2} A D_i^{-1/2}, \\quad
               E = \\frac{1}{L+1} \\sum_{l=0}^{L} E^{l}

    ``propagator`` (see :mod:`cml_dgl.graph.backends`) must hold exactly one relation: the target
    behavior (``lightgcn``) or the union of all behaviors (``lightgcn-merged``, ``merged=True``,
    which also trains on that union). It is a plain attribute, not part of ``state_dict``, and
    must live on the model's device. With ``n_layers=0`` the model is MF. Trained with
    :func:`~cml_dgl.models.baselines.mf.bpr_objective`, the L2 term on the ego embeddings.
    """

    def __init__(self, n_users: int, n_items: int, propagator, dim: int = 64, n_layers: int = 3,
                 init_std: float = 0.1, reg: float = 0.0, merged: bool = False):
        super().__init__()
        n_rel = getattr(propagator, "n_behaviors", None)
        if n_rel != 1:
            raise CmlError(f"LightGCN needs a propagator with exactly one relation, got {n_rel}")
        if (propagator.n_users, propagator.n_items) != (n_users, n_items):
            raise CmlError(f"propagator covers {propagator.n_users} users / {propagator.n_items} items, "
                           f"the model {n_users} / {n_items}")
        if n_layers < 0:
            raise CmlError(f"n_layers must be >= 0, got {n_layers}")
        self.n_users, self.n_items, self.dim, self.n_layers = n_users, n_items, dim, n_layers
        self.reg, self.merged = reg, merged
        self.propagator = propagator
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user_emb.weight, std=init_std)
        nn.init.normal_(self.item_emb.weight, std=init_std)

    @classmethod
    def from_config(cls, ds: Any, cfg: dict[str, Any], device: torch.device, merged: bool = False) -> "LightGCN":
        if merged:
            prop = propagator_for_dataset(ds, backend=cfg["backend"], norm="sym", device=device, merge=True)
        else:
            prop = propagator_for_dataset(ds, backend=cfg["backend"], norm="sym", device=device,
                                          behaviors=[ds.n_behaviors - 1])
        return cls(ds.n_users, ds.n_items, prop, cfg["dim"], cfg["n_layers"], reg=cfg["reg"],
                   merged=merged).to(device)

    def training_edges(self, ds: Any) -> tuple[np.ndarray, np.ndarray]:
        """The target's edges, or with ``merged`` the deduplicated union of every behavior's."""
        if not self.merged:
            return ds.edges(ds.n_behaviors - 1)
        key = np.unique(ds.train_user.astype(np.int64) * ds.n_items + ds.train_item.astype(np.int64))
        return key // ds.n_items, key % ds.n_items

    def embeddings(self) -> tuple[Tensor, Tensor]:
        h_u, h_i = self.user_emb.weight, self.item_emb.weight
        sum_u, sum_i = h_u, h_i
        for _ in range(self.n_layers):
            p_u, p_i = self.propagator(h_u, h_i)
            h_u, h_i = p_u[0], p_i[0]
            sum_u, sum_i = sum_u + h_u, sum_i + h_i
        scale = 1.0 / (self.n_layers + 1)
        return sum_u * scale, sum_i * scale

    def bpr_loss(self, users: Tensor, pos: Tensor, neg: Tensor, reg: float) -> Tensor:
        eu, ei = self.embeddings()
        ego = (self.user_emb(users), self.item_emb(pos), self.item_emb(neg))
        # index_select: its backward adds in a fixed order on the CPU, unlike that of eu[users]
        return bpr_objective(eu.index_select(0, users), ei.index_select(0, pos), ei.index_select(0, neg), ego, reg)
