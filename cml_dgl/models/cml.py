"""The behavior-aware graph encoder of CML (paper Eq. 1-2, readout as in the authors' code).

Notation: U users, I items, K behaviors (target last), d = ``dim``, L = ``n_layers``, act = PReLU
(paper) or sigmoid (official code), :math:`\\hat A_k` the (normalised) U × I matrix of behavior k
held by the propagator. With :math:`H_u^0 = E_u`, :math:`H_i^0 = E_i`, for l = 1..L:

.. math::

    P_u^{k,l} = \\hat A_k H_i^{l-1}, \\qquad P_i^{k,l} = \\hat A_k^T H_u^{l-1}
        \\qquad \\text{(Eq. 1, every k)}

    H_u^l = \\mathrm{act}_u^l\\big(\\tfrac1K \\textstyle\\sum_k P_u^{k,l}\\, W_u^l\\big), \\qquad
    H_u^{k,l} = \\mathrm{act}_u^l\\big(P_u^{k,l} W_u^l\\big) \\qquad \\text{(Eq. 2; items alike)}

Only the fused :math:`H^l` feeds layer l+1; the behavior-specific :math:`H^{k,l}` is computed from
the fused :math:`H^{l-1}`. Readout (ego layer 0 excluded, one C per side shared by both views):

.. math::  Z_u = [H_u^1 \\| \\dots \\| H_u^L]\\, C_u, \\qquad Z_u^k = [H_u^{k,1} \\| \\dots \\| H_u^{k,L}]\\, C_u

Scores are :math:`\\hat y(u,i) = \\langle Z_u[u], Z_i[i] \\rangle`. Because act is applied to a
propagated sum without bias, every node without neighbours gets the same :math:`H^l` (act(0)), so all
items without training edges share one embedding and tie in any ranking.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cml_dgl.errors import CmlError
from cml_dgl.graph.backends import Propagator, propagator_for_dataset, same_device
from cml_dgl.models.base import Recommender
from cml_dgl.models.cml_loss import CMLBatch, CMLObjective
from cml_dgl.models.meta import MetaWeightNet

ACTIVATIONS = ("prelu", "sigmoid")
#: the paper's Table 3 ablations: full model, without the contrastive loss, without the meta
#: network (every weight 1), without the meta-knowledge encoder
VARIANTS = ("full", "no-cl", "no-meta", "no-mke")


@dataclass
class CMLOutput:
    """Fused ``user`` (U,d), ``item`` (I,d) and behavior-specific ``user_beh`` (K,U,d), ``item_beh``
    (K,I,d). In training with ``used_view_rows`` the user views are a :class:`UserViews`, which
    computes only the rows asked for."""

    user: Tensor
    item: Tensor
    user_beh: "Tensor | UserViews"
    item_beh: Tensor


class UserViews:
    """The behavior-specific user views :math:`Z_u^k = [act(P_u^{k,1} W_u^1) \\| \\dots \\|
    act(P_u^{k,L} W_u^L)] C_u` from the propagated :math:`P_u^{k,l}`, evaluated only where asked:
    the losses read a few thousand of the K·U rows, and the projection, activation, concatenation
    and readout of the others (with their backward passes) are the largest part of a step's dense
    work. ``views[k]`` gives every row of behavior k."""

    def __init__(self, act, weights: list[Tensor], readout: Tensor, propagated: list[Tensor]):
        self._act, self._w, self._readout, self._p = act, weights, readout, propagated
        self.n_behaviors, self.n_users = propagated[0].shape[0], propagated[0].shape[1]
        self._full: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return self.n_behaviors

    def __getitem__(self, k: int) -> Tensor:
        if k not in self._full:
            parts = [self._act(layer, p[k] @ w) for layer, (p, w) in enumerate(zip(self._p, self._w))]
            self._full[k] = torch.cat(parts, -1) @ self._readout
        return self._full[k]

    def rows(self, requests: list[tuple[int, Tensor]]) -> list[Tensor]:
        """For each (behavior k, user index (n,)), the rows ``views[k][index]`` (n, d): one gather,
        projection, activation and readout for all requests together."""
        if not requests:
            return []
        flat = torch.cat([idx + k * self.n_users for k, idx in requests])
        parts = [self._act(layer, p.reshape(-1, p.shape[-1]).index_select(0, flat) @ w)
                 for layer, (p, w) in enumerate(zip(self._p, self._w))]
        return list((torch.cat(parts, -1) @ self._readout).split([len(idx) for _, idx in requests]))


class CML(Recommender):
    """CML encoder; see the module docstring for the equations.

    Parameters: E_u, E_i (Xavier uniform); per layer W_u^l, W_i^l (d × d, Xavier, shared by the fused
    and every behavior-specific path); per layer one single-parameter PReLU per side (only with
    ``activation="prelu"``); readout C_u, C_i (L·d × d, Xavier). The propagator is a plain
    attribute: it is neither a submodule nor in the ``state_dict``, and :meth:`clone` shares it.

    Built by :meth:`from_config`, the model also holds its training objective
    (:class:`~cml_dgl.models.cml_loss.CMLObjective`, :meth:`loss`) and the meta weight network
    ``meta`` (Eq. 4-6; None for the no-meta variant), both plain attributes shared by clones; the
    meta network's parameters are trained and saved apart from the encoder's.
    """

    has_behavior_views = True

    def __init__(self, n_users: int, n_items: int, n_behaviors: int, propagator: Propagator, dim: int = 16,
                 n_layers: int = 3, activation: str = "prelu", merged_item_mean: bool = False,
                 used_view_rows: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise CmlError(f"unknown activation {activation!r}; expected one of {list(ACTIVATIONS)}")
        if dim < 1 or n_layers < 1:
            raise CmlError(f"dim and n_layers must be positive, got dim={dim}, n_layers={n_layers}")
        got = (propagator.n_users, propagator.n_items, propagator.n_behaviors)
        if got != (n_users, n_items, n_behaviors):
            raise CmlError(f"the propagator has (users, items, behaviors) = {got}, the model was asked "
                           f"for {(n_users, n_items, n_behaviors)}")
        self.n_users, self.n_items, self.n_behaviors = n_users, n_items, n_behaviors
        self.dim, self.n_layers, self.activation = dim, n_layers, activation
        self.merged_item_mean, self.used_view_rows = merged_item_mean, used_view_rows
        object.__setattr__(self, "propagator", propagator)  # never registered as a submodule
        object.__setattr__(self, "meta", None)
        object.__setattr__(self, "objective", None)
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, dim)))
        self.user_w = nn.ParameterList(
            [nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, dim))) for _ in range(n_layers)])
        self.item_w = nn.ParameterList(
            [nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, dim))) for _ in range(n_layers)])
        if activation == "prelu":
            self.user_act = nn.ModuleList([nn.PReLU(1) for _ in range(n_layers)])
            self.item_act = nn.ModuleList([nn.PReLU(1) for _ in range(n_layers)])
        self.user_readout = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_layers * dim, dim)))
        self.item_readout = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_layers * dim, dim)))

    @classmethod
    def from_config(cls, ds: Any, cfg: dict[str, Any], device: torch.device) -> "CML":
        """The encoder of config keys ``dim, n_layers, activation, norm, backend, merged_item_mean,
        used_view_rows``, its meta
        network (``meta_*`` keys, unless ``variant: no-meta``) and its objective."""
        prop = propagator_for_dataset(ds, backend=cfg["backend"], norm=cfg["norm"], device=device)
        model = cls(ds.n_users, ds.n_items, ds.n_behaviors, prop, dim=cfg["dim"], n_layers=cfg["n_layers"],
                    activation=cfg["activation"], merged_item_mean=cfg["merged_item_mean"],
                    used_view_rows=cfg["used_view_rows"]).to(device)
        meta = None
        if cfg["variant"] != "no-meta":
            meta = MetaWeightNet(dim=cfg["dim"], dropout=cfg["meta_dropout"], gamma=cfg["meta_gamma"],
                                 halve_bpr=cfg["meta_halve_bpr"], mke=cfg["variant"] != "no-mke",
                                 n_behaviors=ds.n_behaviors,
                                 detach_loss=cfg["meta_detach_loss"]).to(device)
        model.attach(CMLObjective(cfg, ds.n_behaviors, meta))
        return model

    def attach(self, objective: CMLObjective) -> None:
        """Set the training objective (and with it the meta network) that :meth:`loss` uses."""
        object.__setattr__(self, "objective", objective)
        object.__setattr__(self, "meta", objective.meta)

    def loss(self, batch: CMLBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The objective of one batch on this encoder's output (see :mod:`cml_dgl.models.cml_loss`)."""
        if self.objective is None:
            raise CmlError("this CML model has no objective; build it with CML.from_config or attach one")
        return self.objective(self(item_behavior=False), batch)

    def _act(self, side: str, layer: int, x: Tensor) -> Tensor:
        if self.activation == "sigmoid":
            return torch.sigmoid(x)
        return (self.user_act if side == "user" else self.item_act)[layer](x)

    def _encode(self, behavior_specific: bool, item_behavior: bool = True) -> CMLOutput:
        if not same_device(self.user_emb.device, self.propagator.device):
            raise CmlError(f"model parameters are on {self.user_emb.device} but the propagator is on "
                           f"{self.propagator.device}; build the propagator for the model's device")
        h_u, h_i = self.user_emb, self.item_emb
        fused_u, fused_i, beh_u, beh_i = [], [], [], []
        item_views = behavior_specific and item_behavior
        lazy = behavior_specific and not item_behavior and self.used_view_rows
        pre_u = []
        for layer in range(self.n_layers):
            if self.merged_item_mean:
                p_u, p_i = self.propagator.user_side(h_i), self.propagator.item_side(h_u) if item_views else None
                mean_i = self.propagator.item_mean(h_u)
            else:
                p_u, p_i = self.propagator(h_u, h_i)
                mean_i = None if item_views else p_i.mean(0)
            # mean_k(P^k) W = mean_k(P^k W): one (K,·,d) product serves both paths; the lazy user
            # views project only their rows, so the fused path projects the mean
            q_u = None if lazy else p_u @ self.user_w[layer]
            q_i = p_i @ self.item_w[layer] if item_views else None
            m_u = p_u.mean(0) @ self.user_w[layer] if lazy else q_u.mean(0)
            m_i = q_i.mean(0) if mean_i is None else mean_i @ self.item_w[layer]
            h_u = self._act("user", layer, m_u)
            h_i = self._act("item", layer, m_i)
            fused_u.append(h_u)
            fused_i.append(h_i)
            if lazy:
                pre_u.append(p_u)
            elif behavior_specific:
                beh_u.append(self._act("user", layer, q_u))
                if item_behavior:
                    beh_i.append(self._act("item", layer, q_i))
        user = torch.cat(fused_u, -1) @ self.user_readout
        item = torch.cat(fused_i, -1) @ self.item_readout
        if not behavior_specific:
            empty = user.new_empty(0)
            return CMLOutput(user, item, empty, empty)
        item_beh = torch.cat(beh_i, -1) @ self.item_readout if item_behavior else item.new_empty(0)
        if lazy:
            return CMLOutput(user, item, UserViews(lambda layer, x: self._act("user", layer, x), list(self.user_w),
                                                   self.user_readout, pre_u), item_beh)
        return CMLOutput(user, item, torch.cat(beh_u, -1) @ self.user_readout, item_beh)

    def forward(self, item_behavior: bool = True) -> CMLOutput:
        """Fused and behavior-specific embeddings of all users and items.

        ``item_behavior=False`` skips the item-side behavior-specific views (``item_beh`` is then
        empty): no loss uses them, so training leaves them out. With ``used_view_rows`` it also
        returns the user views as a :class:`UserViews`, which the objective asks for its rows only.
        """
        return self._encode(behavior_specific=True, item_behavior=item_behavior)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Fused (user (U,d), item (I,d)) embeddings, the ones used for scoring (skips the K views)."""
        out = self._encode(behavior_specific=False)
        return out.user, out.item

    def clone(self) -> "CML":
        """An independent copy of the parameters (no RNG draws), sharing this model's propagator,
        objective and meta network."""
        shared = (self.propagator, self.meta, self.objective)
        new = copy.deepcopy(self, memo={id(x): x for x in shared if x is not None})
        for p in new.parameters():
            p.grad = None
        return new

    def extra_repr(self) -> str:
        return (f"users={self.n_users}, items={self.n_items}, behaviors={self.n_behaviors}, dim={self.dim}, "
                f"layers={self.n_layers}, activation={self.activation!r}, propagator={self.propagator!r}")
