"""CML's training objective of one batch (paper Eq. 3, 5-7; cml-spec section 5).

With BPR triples :math:`O_k` per behavior k (target K last), contrast sample S, the meta
network's weights :math:`w` (Eq. 5-6) and batch size B:

.. math::

    Obj = \\frac1B \\Big[ \\frac1K \\sum_k \\sum_{(u,p,n) \\in O_k} w^{bpr}_{u,k}\\,
          \\ell_{bpr}(u,p,n) \\;+\\; \\lambda\\, Reg \\;+\\;
          \\frac{\\beta}{|C|} \\sum_{k \\in C} \\sum_{u \\in S} w^{cl}_{u,k}\\, \\ell_{cl}(u, k) \\Big]

:math:`\\ell_{bpr}` is Eq. 7 on the fused embeddings :math:`Z`, :math:`\\ell_{cl}(u, k)` the
InfoNCE loss (Eq. 3) between user u's target view :math:`Z_u^K` and its behavior-k view
:math:`Z_u^k`, C the contrasted behaviors (the auxiliary ones, and the target with
``cl_include_target``). Reg is the squared norm of the batch's final embedding rows (every
behavior's, or the target's alone with ``reg_all_behaviors: false``, then not divided by K); with
``reg_on: ego`` the rows of the ego embeddings E instead (as LightGCN). With ``item_bias`` every
behavior's BPR scores add :math:`b_i`, with ``history`` the target's add :math:`h(u, i)`
(``out.extra``).
Without a meta network (``no-meta``) or with ``weigh="none"`` every w is 1. With
``aux_edge_weight: balanced`` behavior k's BPR and L2 terms are multiplied by
:math:`s_k = P_k / E_k` (:func:`behavior_scales`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from cml_dgl.models.losses import bpr_loss, contrastive_log_mask, contrastive_loss

WEIGHINGS = ("grad", "nograd", "none")


def _rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` whose backward is deterministic on the CPU (index_add); the backward of
    ``x[index]`` (index_put with accumulate) adds in a thread-dependent order on large inputs."""
    return x.index_select(0, index)


def _identity(x: Tensor) -> Tensor:
    return x.sum()


class _Views:
    """Rows of the behavior-specific user views. A (K,U,d) tensor is indexed where a loss asks;
    a :class:`~cml_dgl.models.cml.UserViews` gets every request of the batch at once (``prefetch``),
    those whose gradient no loss needs without one."""

    def __init__(self, user_beh: Any):
        self.user_beh, self._rows = user_beh, {}

    def prefetch(self, requests: list[tuple[int, Tensor]], grad: bool) -> None:
        if not hasattr(self.user_beh, "rows"):
            return
        requests = list({(k, id(idx)): (k, idx) for k, idx in requests}.values())
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            rows = self.user_beh.rows(requests)
        self._rows.update({(k, id(idx)): r for (k, idx), r in zip(requests, rows)})

    def get(self, k: int, index: Tensor) -> Tensor:
        got = self._rows.get((k, id(index)))
        return _rows(self.user_beh[k], index) if got is None else got


@dataclass
class CMLBatch:
    """One batch of CML's objective: BPR ``triples`` per behavior (objects with ``users``,
    ``pos``, ``neg`` index tensors), the contrast sample ``cl_users``, and how the meta network
    weighs the per-sample losses: ``"grad"`` (weights with gradients, phases 1-2), ``"nograd"``
    (weights without gradients, phase 3) or ``"none"`` (every weight 1)."""

    triples: Sequence[Any]
    cl_users: Tensor
    weigh: str = "none"


@dataclass
class CMLObjective:
    """The objective above for config ``cfg``; ``meta`` is the weight network (None: no-meta).

    ``shard_sum`` reduces a per-sample vector to this process's share of its sum (the identity
    sum outside data parallelism, see :mod:`cml_dgl.train.distributed`). Logged parts come back
    as detached float64 tensors on the model's device (no host sync).
    """

    cfg: dict[str, Any]
    n_behaviors: int
    meta: nn.Module | None = None
    shard_sum: Callable[[Tensor], Tensor] = field(default=_identity)
    #: a factor per behavior on its BPR and L2 terms (:func:`behavior_scales`); None: all 1
    behavior_scale: tuple[float, ...] | None = None

    def __call__(self, out: Any, batch: CMLBatch) -> tuple[Tensor, dict[str, Tensor]]:
        cfg, K, shard_sum = self.cfg, self.n_behaviors, self.shard_sum
        weigh = batch.weigh
        meta = self.meta if weigh != "none" else None
        cl_behaviors = list(range(K if cfg["cl_include_target"] else K - 1))
        s = batch.cl_users
        with_cl = cfg["variant"] != "no-cl" and cfg["beta"] > 0 and len(s) >= 2 and bool(cl_behaviors)
        views = _Views(out.user_beh)
        if meta is not None:
            views.prefetch([(k, t.users) for k, t in enumerate(batch.triples) if len(t)], grad=weigh == "grad")
        if with_cl:
            views.prefetch([(K - 1, s)] + [(k, s) for k in cl_behaviors], grad=True)
        bpr_sum = out.user.new_zeros(())
        reg = out.user.new_zeros(())
        for k, t in enumerate(batch.triples):
            if len(t) == 0:
                continue
            u, p, n = t.users, t.pos, t.neg
            zu, zp, zn = _rows(out.user, u), _rows(out.item, p), _rows(out.item, n)
            pos, neg = (zu * zp).sum(-1), (zu * zn).sum(-1)
            extra_p = out.extra(u, p, k == K - 1) if out.extra is not None else None
            if extra_p is not None:
                pos, neg = pos + extra_p, neg + out.extra(u, n, k == K - 1)
            loss = bpr_loss(pos, neg)
            if meta is not None:
                w = self._weights(meta.bpr_weights, loss, zu, views.get(k, u), k, weigh)
                loss = w * loss
            scale = None if self.behavior_scale is None else self.behavior_scale[k]
            bpr_sum = bpr_sum + (shard_sum(loss) if scale is None else scale * shard_sum(loss))
            if cfg["reg_all_behaviors"] or k == K - 1:
                if cfg["reg_on"] == "ego":
                    zu, zp, zn = _rows(out.ego_user, u), _rows(out.ego_item, p), _rows(out.ego_item, n)
                if scale is None:  # the sums in this order, so that runs without factors stay bit for bit
                    reg = reg + shard_sum(zu.pow(2)) + shard_sum(zp.pow(2)) + shard_sum(zn.pow(2))
                else:
                    reg = reg + scale * (shard_sum(zu.pow(2)) + shard_sum(zp.pow(2)) + shard_sum(zn.pow(2)))
        total = bpr_sum / K + cfg["reg"] * (reg / K if cfg["reg_all_behaviors"] else reg)
        logs = {"bpr": bpr_sum.detach().double() / cfg["batch_size"] / K}
        if with_cl:
            anchor = views.get(K - 1, s)
            fused = _rows(out.user, s) if meta is not None else None
            mask = contrastive_log_mask(len(s), s, variant=cfg["cl_variant"], chunk_size=cfg["cl_chunk"],
                                        dtype=anchor.dtype, device=anchor.device)
            cl_sum = out.user.new_zeros(())
            for k in cl_behaviors:
                view = views.get(k, s)
                loss = contrastive_loss(anchor, view, temperature=cfg["cl_temperature"],
                                        similarity=cfg["cl_similarity"], variant=cfg["cl_variant"],
                                        chunk_size=cfg["cl_chunk"], users=s, log_mask=mask)
                if meta is not None:
                    w = self._weights(meta.cl_weights, loss, view, fused, k, weigh)
                    loss = w * loss
                cl_sum = cl_sum + shard_sum(loss)
            total = total + cfg["beta"] * cl_sum / len(cl_behaviors)
            logs["cl"] = cl_sum.detach().double() / cfg["batch_size"] / len(cl_behaviors)
        logs["reg"] = reg.detach().double() / cfg["batch_size"]
        return total / cfg["batch_size"], logs

    def _weights(self, fn, loss: Tensor, z_a: Tensor, z_b: Tensor, k: int, weigh: str) -> Tensor:
        if weigh == "grad":
            return fn(loss, z_a, z_b, k)
        was_training = self.meta.training
        if self.cfg["meta_eval_weights"]:
            self.meta.eval()
        with torch.no_grad():
            w = fn(loss.detach(), z_a.detach(), z_b.detach(), k)
        self.meta.train(was_training)
        return w


def behavior_scales(ds: Any, cfg: dict[str, Any]) -> tuple[float, ...] | None:
    """Config ``aux_edge_weight: balanced`` with ``aux_draws: edges``: behavior k's factor P_k / E_k,
    with P_k the training purchases whose user has a behavior-k edge (the draws ``aux_draws: target``
    makes of it an epoch) and E_k its edges (one pass's triples), so that each auxiliary term weighs
    in all what it weighs with one draw per purchase; the target's factor is 1. None otherwise."""
    if cfg["aux_draws"] != "edges" or cfg["aux_edge_weight"] != "balanced":
        return None
    K = ds.n_behaviors
    buyers = ds.edges(K - 1)[0]
    scales = []
    for k in range(K - 1):
        users = ds.edges(k)[0]
        has = np.zeros(ds.n_users, dtype=bool)
        has[users] = True
        scales.append(float(has[buyers].sum()) / len(users) if len(users) else 1.0)
    return (*scales, 1.0)
