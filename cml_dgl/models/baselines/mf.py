"""BPR matrix factorisation, and the pairwise objective MF and LightGCN share."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cml_dgl.models.base import Recommender


def bpr_objective(u: Tensor, p: Tensor, n: Tensor, ego: tuple[Tensor, Tensor, Tensor], reg: float) -> Tensor:
    """Mean BPR loss of final embeddings ``u, p, n`` (B, d) plus ``reg`` · ½‖ego‖² / B:

    .. math::  L = \\frac1B \\sum_b -\\ln \\sigma(s(u_b, p_b) - s(u_b, n_b))
               + reg \\cdot \\frac{1}{2B} \\left(\\lVert E^0_{u} \\rVert^2 + \\lVert E^0_{p} \\rVert^2
               + \\lVert E^0_{n} \\rVert^2\\right)

    where :math:`E^0` are the ego (layer-0, trainable) embeddings of the batch's users and items.
    """
    diff = (u * p).sum(-1) - (u * n).sum(-1)
    l2 = sum(e.pow(2).sum() for e in ego) / (2.0 * u.shape[0])
    return F.softplus(-diff).mean() + reg * l2


class PairwiseRecommender(Recommender):
    """A model trained by the pairwise strategy: BPR on the target behavior's training edges."""

    reg: float = 0.0

    def bpr_loss(self, users: Tensor, pos: Tensor, neg: Tensor, reg: float) -> Tensor:
        raise NotImplementedError

    def loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """:func:`bpr_objective` of a batch of ``users, pos, neg`` with the config's ``reg``."""
        total = self.bpr_loss(batch.users, batch.pos, batch.neg, self.reg)
        return total, {"bpr": total.detach().double()}

    def training_edges(self, ds: Any) -> tuple[np.ndarray, np.ndarray]:
        return ds.edges(ds.n_behaviors - 1)


class MF(PairwiseRecommender):
    """BPR matrix factorisation (Rendle et al. 2009): :math:`e_u = E_U[u]`, :math:`e_i = E_I[i]`."""

    def __init__(self, n_users: int, n_items: int, dim: int = 64, init_std: float = 0.1, reg: float = 0.0):
        super().__init__()
        self.n_users, self.n_items, self.dim, self.reg = n_users, n_items, dim, reg
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user_emb.weight, std=init_std)
        nn.init.normal_(self.item_emb.weight, std=init_std)

    @classmethod
    def from_config(cls, ds: Any, cfg: dict[str, Any], device: torch.device) -> "MF":
        return cls(ds.n_users, ds.n_items, cfg["dim"], reg=cfg["reg"]).to(device)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_emb.weight, self.item_emb.weight

    def bpr_loss(self, users: Tensor, pos: Tensor, neg: Tensor, reg: float) -> Tensor:
        u, p, n = self.user_emb(users), self.item_emb(pos), self.item_emb(neg)
        return bpr_objective(u, p, n, (u, p, n), reg)
