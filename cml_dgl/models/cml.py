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

Options that leave the paper (on in the config's defaults since issue 13, off in this class's own
keyword defaults and with ``--preset paper``; see docs/design.md): ``propagation: linear``
drops :math:`W` and act (:math:`H^l = \\tfrac1K \\sum_k P^{k,l}`, :math:`H^{k,l} = P^{k,l}`, as in
LightGCN); ``readout: mean`` replaces the concatenation and C by the mean over layers 0..L, the ego
layer included (:math:`Z_u = \\tfrac1{L+1} \\sum_{l=0}^L H_u^l`, :math:`Z_u^k = \\tfrac1{L+1}(E_u +
\\sum_{l \\ge 1} H_u^{k,l})`); ``init: normal`` draws E from N(0, ``init_std``²) instead of Xavier;
``fusion: merged`` computes the fused layer from the union of every behavior's edges, normalised
once (:math:`H_u^l = \\mathrm{act}(\\hat A_{\\cup} H_i^{l-1} W)`, LightGCN-merged's graph), instead of
the mean of the K normalised matrices, which gives a behavior with few edges (carts) as much weight
as one with many (views); the behavior views stay :math:`\\hat A_k H^{l-1}`.

Scores are :math:`\\hat y(u,i) = \\langle Z_u[u], Z_i[i] \\rangle + b_i + h(u, i)`, the last two only
with ``item_bias`` (a learned bias per item) and ``history`` (learned weights of the user's own
auxiliary edges with the item, :mod:`cml_dgl.models.history_term`); the bias enters every
behavior's BPR term, the history term the target's alone (an auxiliary behavior's positive is
that behavior's edge by definition), and both are outside the embeddings (``export-embeddings`` writes Z;
``evaluate`` and ``recommend`` use the whole score). Because act is applied to a
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
from cml_dgl.models.base import EmbeddingScorer, Recommender, Scorer
from cml_dgl.models.cml_loss import CMLBatch, CMLObjective, behavior_scales
from cml_dgl.models.history_term import UserHistory, history_enabled
from cml_dgl.models.meta import MetaWeightNet

ACTIVATIONS = ("prelu", "sigmoid")
PROPAGATIONS = ("nonlinear", "linear")  # per-layer W and act (paper Eq. 2) | plain propagation (LightGCN)
READOUTS = ("concat", "mean")  # [H^1 .. H^L] C (paper, code) | mean over layers 0..L (LightGCN)
INITS = ("xavier", "normal")
FUSIONS = ("mean", "merged")  # (1/K) sum_k A_k H (paper Eq. 2) | A_merged H, the union graph normalised once
#: the paper's Table 3 ablations: full model, without the contrastive loss, without the meta
#: network (every weight 1), without the meta-knowledge encoder
VARIANTS = ("full", "no-cl", "no-meta", "no-mke")


class _BehaviorMean(torch.autograd.Function):
    """``x.mean(0)``, whose backward returns ``grad / K`` broadcast over the K behaviors as a view:
    the values autograd's own mean backward materialises as a (K, n, d) tensor, without writing it
    (the propagators' backward reads each behavior's (n, d) slice)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        ctx.k = x.shape[0]
        return x.mean(0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return (grad / ctx.k).unsqueeze(0).expand(ctx.k, *grad.shape)


def behavior_mean(x: Tensor) -> Tensor:
    """The mean over the behavior axis of a (K, n, d) tensor (bit for bit ``x.mean(0)``, gradients too)."""
    return _BehaviorMean.apply(x)


@dataclass
class CMLOutput:
    """Fused ``user`` (U,d), ``item`` (I,d) and behavior-specific ``user_beh`` (K,U,d), ``item_beh``
    (K,I,d), and the ego embeddings E_u, E_i (``reg_on: ego`` regularises those). In training with
    ``used_view_rows`` the user views are a :class:`UserViews`, which computes only the rows asked
    for."""

    user: Tensor
    item: Tensor
    user_beh: "Tensor | UserViews"
    item_beh: Tensor
    ego_user: Tensor | None = None
    ego_item: Tensor | None = None
    extra: Any = None  # (users, items) -> the score terms beyond <Z_u, Z_i> (b_i + h(u, i)), or None


class UserViews:
    """The behavior-specific user views :math:`Z_u^k` from the propagated :math:`P_u^{k,l}`,
    evaluated only where asked: the losses read a few thousand of the K·U rows, and the
    projection, activation and readout of the others (with their backward passes) are the largest
    part of a step's dense work. ``layer(l, x)`` maps propagated rows to :math:`H^{k,l}` rows,
    ``readout(parts, users)`` the per-layer rows of ``users`` to views. ``views[k]`` gives every
    row of behavior k."""

    def __init__(self, layer, readout, propagated: list[Tensor]):
        self._layer, self._readout, self._p = layer, readout, propagated
        self.n_behaviors, self.n_users = propagated[0].shape[0], propagated[0].shape[1]
        self._full: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return self.n_behaviors

    def __getitem__(self, k: int) -> Tensor:
        if k not in self._full:
            parts = [self._layer(layer, p[k]) for layer, p in enumerate(self._p)]
            self._full[k] = self._readout(parts, None)
        return self._full[k]

    def rows(self, requests: list[tuple[int, Tensor]]) -> list[Tensor]:
        """For each (behavior k, user index (n,)), the rows ``views[k][index]`` (n, d): one gather,
        projection, activation and readout for all requests together."""
        if not requests:
            return []
        flat = torch.cat([idx + k * self.n_users for k, idx in requests])
        parts = [self._layer(layer, p.reshape(-1, p.shape[-1]).index_select(0, flat))
                 for layer, p in enumerate(self._p)]
        users = torch.cat([idx for _, idx in requests])
        return list(self._readout(parts, users).split([len(idx) for _, idx in requests]))


class ExtendedScorer(EmbeddingScorer):
    """Scores :math:`\\langle Z_u, Z_i \\rangle + b_i + h(u, i)` of fixed tensors: the embeddings'
    product plus the item bias (I,) or None and the history term's rows and pairs."""

    def __init__(self, user: Tensor, item: Tensor, bias: Tensor | None, history: UserHistory | None,
                 weights: Tensor | None):
        super().__init__(user, item)
        self.bias, self.history, self.weights = bias, history, weights

    def score_users(self, users: Tensor) -> Tensor:
        s = super().score_users(users)
        if self.bias is not None:
            s = s + self.bias
        if self.history is not None:
            s = s + self.history.rows(self.weights, users)
        return s

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        s = super().score(users, items)
        if self.bias is not None:
            s = s + self.bias[items]
        if self.history is not None:
            s = s + self.history.pairs(self.weights, users, items)
        return s


class CML(Recommender):
    """CML encoder; see the module docstring for the equations.

    Parameters: E_u, E_i (Xavier uniform, or N(0, init_std²) with ``init="normal"``); with
    ``propagation="nonlinear"``, per layer W_u^l, W_i^l (d × d, Xavier, shared by the fused and
    every behavior-specific path) and one single-parameter PReLU per side (only with
    ``activation="prelu"``); with ``readout="concat"``, C_u, C_i (L·d × d, Xavier). The propagator is a plain
    attribute: it is neither a submodule nor in the ``state_dict``, and :meth:`clone` shares it.

    Built by :meth:`from_config`, the model also holds its training objective
    (:class:`~cml_dgl.models.cml_loss.CMLObjective`, :meth:`loss`) and the meta weight network
    ``meta`` (Eq. 4-6; None for the no-meta variant), both plain attributes shared by clones; the
    meta network's parameters are trained and saved apart from the encoder's.
    """

    has_behavior_views = True

    def __init__(self, n_users: int, n_items: int, n_behaviors: int, propagator: Propagator, dim: int = 16,
                 n_layers: int = 3, activation: str = "prelu", merged_item_mean: bool = False,
                 used_view_rows: bool = False, propagation: str = "nonlinear", readout: str = "concat",
                 init: str = "xavier", init_std: float = 0.1, item_bias: bool = False,
                 history: UserHistory | None = None, history_init: float = 1.0,
                 merged_propagator: Propagator | None = None, history_item_weights: bool = False):
        super().__init__()
        for name, value, allowed in (("activation", activation, ACTIVATIONS), ("propagation", propagation, PROPAGATIONS),
                                     ("readout", readout, READOUTS), ("init", init, INITS)):
            if value not in allowed:
                raise CmlError(f"unknown {name} {value!r}; expected one of {list(allowed)}")
        if dim < 1 or n_layers < 1:
            raise CmlError(f"dim and n_layers must be positive, got dim={dim}, n_layers={n_layers}")
        got = (propagator.n_users, propagator.n_items, propagator.n_behaviors)
        if got != (n_users, n_items, n_behaviors):
            raise CmlError(f"the propagator has (users, items, behaviors) = {got}, the model was asked "
                           f"for {(n_users, n_items, n_behaviors)}")
        self.n_users, self.n_items, self.n_behaviors = n_users, n_items, n_behaviors
        self.dim, self.n_layers, self.activation = dim, n_layers, activation
        self.merged_item_mean, self.used_view_rows = merged_item_mean, used_view_rows
        self.propagation, self.readout, self.init = propagation, readout, init
        object.__setattr__(self, "propagator", propagator)  # never registered as a submodule
        object.__setattr__(self, "meta", None)
        object.__setattr__(self, "objective", None)

        def ego(n: int) -> Tensor:
            x = torch.empty(n, dim)
            return nn.init.xavier_uniform_(x) if init == "xavier" else nn.init.normal_(x, std=init_std)

        self.user_emb = nn.Parameter(ego(n_users))
        self.item_emb = nn.Parameter(ego(n_items))
        if propagation == "nonlinear":
            self.user_w = nn.ParameterList(
                [nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, dim))) for _ in range(n_layers)])
            self.item_w = nn.ParameterList(
                [nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, dim))) for _ in range(n_layers)])
            if activation == "prelu":
                self.user_act = nn.ModuleList([nn.PReLU(1) for _ in range(n_layers)])
                self.item_act = nn.ModuleList([nn.PReLU(1) for _ in range(n_layers)])
        if readout == "concat":
            self.user_readout = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_layers * dim, dim)))
            self.item_readout = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_layers * dim, dim)))
        object.__setattr__(self, "history", history)  # rebuilt from the dataset, not saved
        object.__setattr__(self, "merged_propagator", merged_propagator)  # fusion: merged
        if item_bias:
            self.item_bias = nn.Parameter(torch.zeros(n_items))
        if history is not None:
            self.history_weight = nn.Parameter(torch.full((n_behaviors - 1,), float(history_init)))
            if history_item_weights:
                self.history_item_weight = nn.Parameter(torch.zeros(n_items, n_behaviors - 1))

    @classmethod
    def from_config(cls, ds: Any, cfg: dict[str, Any], device: torch.device) -> "CML":
        """The encoder of config keys ``dim, n_layers, activation, propagation, readout, init,
        init_std, norm, backend, merged_item_mean, used_view_rows``, its meta
        network (``meta_*`` keys, unless ``variant: no-meta``) and its objective."""
        prop = propagator_for_dataset(ds, backend=cfg["backend"], norm=cfg["norm"], device=device)
        history = UserHistory.from_dataset(ds, device) if history_enabled(cfg, ds) else None
        if cfg["fusion"] not in FUSIONS:
            raise CmlError(f"unknown fusion {cfg['fusion']!r}; expected one of {list(FUSIONS)}")
        merged = propagator_for_dataset(ds, backend=cfg["backend"], norm=cfg["norm"], device=device, merge=True) \
            if cfg["fusion"] == "merged" else None
        model = cls(ds.n_users, ds.n_items, ds.n_behaviors, prop, dim=cfg["dim"], n_layers=cfg["n_layers"],
                    activation=cfg["activation"], merged_item_mean=cfg["merged_item_mean"],
                    used_view_rows=cfg["used_view_rows"], propagation=cfg["propagation"],
                    readout=cfg["readout"], init=cfg["init"], init_std=cfg["init_std"],
                    item_bias=cfg["item_bias"], history=history, history_init=cfg["history_init"],
                    merged_propagator=merged, history_item_weights=cfg["history_item_weights"]).to(device)
        meta = None
        if cfg["variant"] != "no-meta":
            meta = MetaWeightNet(dim=cfg["dim"], dropout=cfg["meta_dropout"], gamma=cfg["meta_gamma"],
                                 halve_bpr=cfg["meta_halve_bpr"], mke=cfg["variant"] != "no-mke",
                                 n_behaviors=ds.n_behaviors,
                                 detach_loss=cfg["meta_detach_loss"]).to(device)
        model.attach(CMLObjective(cfg, ds.n_behaviors, meta, behavior_scale=behavior_scales(ds, cfg)))
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

    @property
    def has_extra_terms(self) -> bool:
        """True when scores add b_i or h(u, i) to the embeddings' product."""
        return hasattr(self, "item_bias") or self.history is not None

    def extra(self, users: Tensor, items: Tensor, target: bool = True) -> Tensor | None:
        """:math:`b_i + h(u, i)` for ``users`` (n,) and ``items`` (n,) or (n, m), with gradients;
        without ``target`` (an auxiliary behavior's BPR term) :math:`b_i` alone."""
        out = self.item_bias[items] if hasattr(self, "item_bias") else None
        if self.history is not None and target:
            h = self.history.pairs(self._history_weights(), users, items)
            out = h if out is None else out + h
        return out

    def draw_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """History negatives go with the history term: without it the draws stay uniform."""
        return cfg if self.history is not None else {**cfg, "history_negatives": 0.0}

    def _history_weights(self) -> Tensor:
        """a (K-1,), or a + c (I, K-1) with per-item weights."""
        if hasattr(self, "history_item_weight"):
            return self.history_weight + self.history_item_weight
        return self.history_weight

    @torch.no_grad()
    def scorer(self) -> Scorer:
        user, item = self.embeddings()
        if not self.has_extra_terms:
            return EmbeddingScorer(user, item)
        bias = self.item_bias.detach() if hasattr(self, "item_bias") else None
        weights = self._history_weights().detach() if self.history is not None else None
        return ExtendedScorer(user, item, bias, self.history, weights)

    @torch.no_grad()
    def recommend(self, users: Tensor | Any, k: int, exclude: Any = None,
                  chunk: int | None = None) -> tuple[Tensor, Tensor]:
        if not self.has_extra_terms:
            return super().recommend(users, k, exclude=exclude, chunk=chunk)
        from cml_dgl.models.topk import scorer_topk

        return scorer_topk(self.scorer(), users, k, exclude=exclude, chunk=chunk)

    def _act(self, side: str, layer: int, x: Tensor) -> Tensor:
        if self.propagation == "linear":
            return x
        if self.activation == "sigmoid":
            return torch.sigmoid(x)
        return (self.user_act if side == "user" else self.item_act)[layer](x)

    def _project(self, side: str, layer: int, x: Tensor) -> Tensor:
        if self.propagation == "linear":
            return x
        return x @ (self.user_w if side == "user" else self.item_w)[layer]

    def _read(self, side: str, layers: list[Tensor], ego: Tensor) -> Tensor:
        """Z from the layers' H^1..H^L (fused (n,d) or per behavior (K,n,d)) and the ego rows (n,d)."""
        if self.readout == "concat":
            return torch.cat(layers, -1) @ (self.user_readout if side == "user" else self.item_readout)
        total = ego
        for h in layers:
            total = total + h
        return total * (1.0 / (len(layers) + 1))

    def _user_views(self, propagated: list[Tensor]) -> UserViews:
        def layer(l: int, x: Tensor) -> Tensor:
            return self._act("user", l, self._project("user", l, x))

        def readout(parts: list[Tensor], users: Tensor | None) -> Tensor:
            ego = self.user_emb if users is None else self.user_emb.index_select(0, users)
            return self._read("user", parts, ego)

        return UserViews(layer, readout, propagated)

    def _layer(self, layer: int, h_u: Tensor, h_i: Tensor, behavior_specific: bool, item_views: bool,
               lazy: bool) -> tuple[Tensor | None, ...]:
        """One layer before its activation: the propagated P_u, P_i (K,·,d), their projections
        Q_u, Q_i (None where no view needs them) and the fused pre-activations M_u, M_i."""
        if self.merged_propagator is not None:  # fusion: merged, the union graph for the fused path
            f_u, f_i = self.merged_propagator(h_u, h_i)
            p_u = self.propagator.user_side(h_i) if behavior_specific else None
            p_i = self.propagator.item_side(h_u) if item_views else None
            q_u = self._project("user", layer, p_u) if behavior_specific and not lazy else None
            q_i = self._project("item", layer, p_i) if item_views else None
            return p_u, p_i, q_u, q_i, self._project("user", layer, f_u[0]), self._project("item", layer, f_i[0])
        if self.merged_item_mean:
            p_u, p_i = self.propagator.user_side(h_i), self.propagator.item_side(h_u) if item_views else None
            mean_i = self.propagator.item_mean(h_u)
        else:
            p_u, p_i = self.propagator(h_u, h_i)
            mean_i = None if item_views else behavior_mean(p_i)
        # mean_k(P^k) W = mean_k(P^k W): one (K,·,d) product serves both paths; the lazy user
        # views project only their rows, so the fused path projects the mean
        q_u = None if lazy else self._project("user", layer, p_u)
        q_i = self._project("item", layer, p_i) if item_views else None
        m_u = self._project("user", layer, behavior_mean(p_u)) if lazy else behavior_mean(q_u)
        m_i = behavior_mean(q_i) if mean_i is None else self._project("item", layer, mean_i)
        return p_u, p_i, q_u, q_i, m_u, m_i

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
            p_u, p_i, q_u, q_i, m_u, m_i = self._layer(layer, h_u, h_i, behavior_specific, item_views, lazy)
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
        ego_u, ego_i = self.user_emb, self.item_emb
        user = self._read("user", fused_u, ego_u)
        item = self._read("item", fused_i, ego_i)
        extra = self.extra if self.has_extra_terms else None
        if not behavior_specific:
            empty = user.new_empty(0)
            return CMLOutput(user, item, empty, empty, ego_u, ego_i, extra)
        item_beh = self._read("item", beh_i, ego_i) if item_behavior else item.new_empty(0)
        user_beh = self._user_views(pre_u) if lazy else self._read("user", beh_u, ego_u)
        return CMLOutput(user, item, user_beh, item_beh, ego_u, ego_i, extra)

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
        shared = (self.propagator, self.meta, self.objective, self.history, self.merged_propagator)
        new = copy.deepcopy(self, memo={id(x): x for x in shared if x is not None})
        for p in new.parameters():
            p.grad = None
        return new

    def extra_repr(self) -> str:
        return (f"users={self.n_users}, items={self.n_items}, behaviors={self.n_behaviors}, dim={self.dim}, "
                f"layers={self.n_layers}, activation={self.activation!r}, propagation={self.propagation!r}, "
                f"readout={self.readout!r}, propagator={self.propagator!r}")
