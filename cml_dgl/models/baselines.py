"""Baselines that CML must beat: popularity, BPR matrix factorisation and LightGCN.

Every model exposes ``embeddings() -> (user (U, d), item (I, d))`` with

.. math::  s(u, i) = \\langle e_u, e_i \\rangle ,

so all of them are evaluated by :mod:`cml_dgl.eval` exactly like CML. The trainable ones also
expose ``bpr_loss(users, pos, neg, reg)``, the LightGCN-style objective over a batch of B triples

.. math::  L = \\frac1B \\sum_b -\\ln \\sigma(s(u_b, p_b) - s(u_b, n_b))
           + reg \\cdot \\frac{1}{2B} \\left(\\lVert E^0_{u} \\rVert^2 + \\lVert E^0_{p} \\rVert^2
           + \\lVert E^0_{n} \\rVert^2\\right)

where :math:`E^0` are the ego (layer-0, trainable) embeddings of the batch's users and items.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cml_dgl.data.dataset import Dataset
from cml_dgl.errors import CmlError
from cml_dgl.graph.backends import propagator_for_dataset

BASELINES: tuple[str, ...] = ("pop", "pop-target", "mf", "lightgcn", "lightgcn-merged")


def bpr_objective(u: Tensor, p: Tensor, n: Tensor, ego: tuple[Tensor, Tensor, Tensor], reg: float) -> Tensor:
    """Mean BPR loss of final embeddings ``u, p, n`` (B, d) plus ``reg`` · ½‖ego‖² / B."""
    diff = (u * p).sum(-1) - (u * n).sum(-1)
    l2 = sum(e.pow(2).sum() for e in ego) / (2.0 * u.shape[0])
    return F.softplus(-diff).mean() + reg * l2


class Popularity(nn.Module):
    """Ranks items by their number of training interactions, the same list for every user.

    :math:`e_u = 1 \\in R^1`, :math:`e_i = c_i = |\\{(u, i, b) \\in \\text{train}\\}|` over every
    behavior ``b``, or the target behavior only with ``target_only`` (``pop-target``). Items without
    training interactions all score 0 and tie.
    """

    is_trainable = False

    def __init__(self, ds: Dataset, target_only: bool = False):
        super().__init__()
        items = ds.edges(ds.n_behaviors - 1)[1] if target_only else ds.train_item.astype(np.int64)
        counts = np.bincount(items, minlength=ds.n_items).astype(np.float32)
        self.target_only = target_only
        self.register_buffer("item_counts", torch.from_numpy(counts).unsqueeze(1), persistent=False)
        self.register_buffer("user_ones", torch.ones(ds.n_users, 1), persistent=False)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_ones, self.item_counts


class MF(nn.Module):
    """BPR matrix factorisation (Rendle et al. 2009): :math:`e_u = E_U[u]`, :math:`e_i = E_I[i]`."""

    is_trainable = True

    def __init__(self, n_users: int, n_items: int, dim: int = 64, init_std: float = 0.1):
        super().__init__()
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user_emb.weight, std=init_std)
        nn.init.normal_(self.item_emb.weight, std=init_std)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_emb.weight, self.item_emb.weight

    def bpr_loss(self, users: Tensor, pos: Tensor, neg: Tensor, reg: float) -> Tensor:
        u, p, n = self.user_emb(users), self.item_emb(pos), self.item_emb(neg)
        return bpr_objective(u, p, n, (u, p, n), reg)


class LightGCN(nn.Module):
    """LightGCN (He et al. 2020) on one user-item relation with symmetric normalisation.

    .. math::  E_U^{l+1} = \\hat A E_I^{l}, \\quad E_I^{l+1} = \\hat A^T E_U^{l}, \\quad
               \\hat A = D_u^{-1/2} A D_i^{-1/2}, \\quad
               E = \\frac{1}{L+1} \\sum_{l=0}^{L} E^{l}

    ``propagator`` (see :mod:`cml_dgl.graph.backends`) must hold exactly one relation: the target
    behavior (``lightgcn``) or the union of all behaviors (``lightgcn-merged``). It is a plain
    attribute, not part of ``state_dict``, and must live on the model's device. With
    ``n_layers=0`` the model is MF.
    """

    is_trainable = True

    def __init__(self, n_users: int, n_items: int, propagator, dim: int = 64, n_layers: int = 3,
                 init_std: float = 0.1):
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
        self.propagator = propagator
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user_emb.weight, std=init_std)
        nn.init.normal_(self.item_emb.weight, std=init_std)

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


def _check_name(name: str) -> None:
    if name not in BASELINES:
        raise CmlError(f"unknown baseline {name!r}; expected one of {list(BASELINES)}")


def bpr_edges(name: str, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) int64 of the training positives that baseline ``name`` learns from.

    ``mf``/``lightgcn``: the target behavior's edges; ``lightgcn-merged``: the deduplicated union
    of every behavior's edges. Popularity baselines are not trained and raise :class:`CmlError`.
    """
    _check_name(name)
    if name in ("pop", "pop-target"):
        raise CmlError(f"baseline {name!r} is not trained; it has no BPR positives")
    if name == "lightgcn-merged":
        key = np.unique(ds.train_user.astype(np.int64) * ds.n_items + ds.train_item.astype(np.int64))
        return key // ds.n_items, key % ds.n_items
    return ds.edges(ds.n_behaviors - 1)


def make_baseline(name: str, ds: Dataset, *, dim: int = 64, n_layers: int = 3, backend: str = "auto",
                  device: str | torch.device = "cpu") -> nn.Module:
    """Build baseline ``name`` (one of :data:`BASELINES`) for ``ds``, on ``device``."""
    _check_name(name)
    if name in ("pop", "pop-target"):
        return Popularity(ds, target_only=name == "pop-target").to(device)
    if name == "mf":
        return MF(ds.n_users, ds.n_items, dim).to(device)
    if name == "lightgcn":
        prop = propagator_for_dataset(ds, backend=backend, norm="sym", device=device,
                                      behaviors=[ds.n_behaviors - 1])
    else:
        prop = propagator_for_dataset(ds, backend=backend, norm="sym", device=device, merge=True)
    return LightGCN(ds.n_users, ds.n_items, prop, dim, n_layers).to(device)
