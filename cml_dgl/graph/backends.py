"""The message-passing interface shared by CML and the baselines, with two interchangeable backends.

For K relations (behaviors) with normalised adjacency :math:`\\hat A_k` (U × I, see
:mod:`cml_dgl.graph.build`), a propagator maps user and item features to, for every k,

.. math::  P_{user}[k] = \\hat A_k H_{item} \\quad (K, U, d), \\qquad
           P_{item}[k] = \\hat A_k^T H_{user} \\quad (K, I, d)

i.e. one step of Eq. 1 of the paper per behavior, without mixing behaviors.

* ``"dgl"``: ``dgl.nn.HeteroGraphConv`` over a heterograph with relations (user, b, item) and
  (item, rev_b, user), one parameter-free :class:`_NormalisedSum` per relation: DGL's fused
  ``copy_u``/``sum`` SpMM between a scaling of the sources by (out-degree)^-1/2 and of the
  destinations by (in-degree)^-1/2 in that relation (``GraphConv(norm='both')`` without weights),
  which for a bipartite relation is exactly :math:`D_u^{-1/2} A_k D_i^{-1/2}`; zero-degree nodes
  receive nothing, so their rows stay zero. The degree scalings are computed once, and the
  per-relation outputs are stacked straight into the caller's relation order. The propagator runs
  those modules' arithmetic for all relations of one side in one autograd node
  (:class:`_RelationSums`), bit for bit what ``propagator.conv`` computes and sends back, without
  a node per operation (docs/results.md, "Session 6"). CPU only.
* ``"torch"``: the K relations stacked in one sparse CSR matrix, one sparse-dense product per side,
  with a hand-written backward (the precomputed transpose). Any device; never imports DGL.

Propagators are plain objects, not ``nn.Module`` s: models keep them as attributes outside their
``state_dict`` and clones share them.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from cml_dgl.errors import CmlError
from cml_dgl.graph.build import (
    ITEM,
    NORMS,
    REVERSE_PREFIX,
    USER,
    Relations,
    build_heterograph,
    import_dgl,
    mean_item_adjacency,
    prepare_relations,
    stacked_adjacency,
)

BACKENDS = ("auto", "dgl", "torch")
DGL_VERSION_PREFIX = "2.1."


@runtime_checkable
class Propagator(Protocol):
    """One normalised propagation step over every relation, kept separate per relation."""

    n_behaviors: int
    n_users: int
    n_items: int
    device: torch.device
    names: tuple[str, ...]
    norm: str
    backend: str

    def __call__(self, h_user: Tensor, h_item: Tensor) -> tuple[Tensor, Tensor]:
        """P_user[k] = Â_k @ h_item (K,U,d) and P_item[k] = Â_k^T @ h_user (K,I,d), for every relation k."""
        ...

    def user_side(self, h_item: Tensor) -> Tensor:
        """P_user alone (K,U,d), bitwise the first output of the call."""
        ...

    def item_side(self, h_user: Tensor) -> Tensor:
        """P_item alone (K,I,d), bitwise the second output of the call."""
        ...

    def item_mean(self, h_user: Tensor) -> Tensor:
        """mean_k P_item[k] (I,d) as one product with Ā^T = (1/K) Σ_k Â_k^T: the same sum in
        another order, so equal to ``P_item.mean(0)`` up to float rounding."""
        ...


def _dgl_unavailable_reason() -> str | None:
    """None when DGL 2.1.x imports, else why not."""
    try:
        dgl = import_dgl()
    except Exception as e:  # noqa: BLE001  (a broken DGL install fails with many error types)
        return f"dgl cannot be imported ({type(e).__name__}: {e})"
    version = getattr(dgl, "__version__", "unknown")
    if not str(version).startswith(DGL_VERSION_PREFIX):
        return f"dgl {version} is installed, cml-dgl supports dgl {DGL_VERSION_PREFIX}x only"
    return None


def resolve_backend(backend: str, device: str | torch.device) -> str:
    """The backend to use: ``"dgl"`` or ``"torch"``.

    ``"auto"`` picks ``"dgl"`` on a CPU device where DGL 2.1.x imports, otherwise ``"torch"``.
    Asking for ``"dgl"`` on a non-CPU device or where DGL is unusable raises :class:`CmlError`.
    """
    if backend not in BACKENDS:
        raise CmlError(f"unknown message-passing backend {backend!r}; expected one of {list(BACKENDS)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise CmlError(f"invalid device {device!r} ({e})") from None
    if backend == "torch":
        return "torch"
    if dev.type != "cpu":
        if backend == "dgl":
            raise CmlError(f"backend 'dgl' runs on the CPU only (no CUDA build of DGL 2.1 exists); "
                           f"use backend 'torch' for device {dev}")
        return "torch"
    reason = _dgl_unavailable_reason()
    if reason is None:
        return "dgl"
    if backend == "dgl":
        raise CmlError(f"backend 'dgl' is unavailable: {reason}; install the 'dgl' extra "
                       f"(pip install 'cml-dgl[dgl]') or use backend 'torch'")
    return "torch"


def _spmm(m: Tensor, x: Tensor) -> Tensor:
    """``m @ x`` for a CSR ``m``, written into a fresh uninitialised output (``beta=0`` ignores its
    contents): the same values as ``torch.sparse.mm``, without its zero fill and result copy."""
    out = x.new_empty(m.shape[0], x.shape[1])
    return torch.addmm(out, m, x, beta=0, out=out)


class _StackedSpMM(torch.autograd.Function):
    """y = M x for a sparse constant M, with dx = M^T dy from a precomputed sparse M^T."""

    @staticmethod
    def forward(ctx, m: Tensor, m_t: Tensor, x: Tensor) -> Tensor:  # noqa: D102
        ctx.m_t = m_t
        return _spmm(m, x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return None, None, _spmm(ctx.m_t, grad.contiguous())


class TorchPropagator:
    """Pure-torch backend: :math:`[\\hat A_1; …; \\hat A_K] H_{item}` as one CSR product (any device)."""

    backend = "torch"

    def __init__(self, rel: Relations, norm: str, device: torch.device):
        self.n_users, self.n_items, self.n_behaviors = rel.n_users, rel.n_items, rel.n_relations
        self.names, self.norm, self.device = rel.names, norm, device
        self.n_edges = rel.n_edges()
        self._rel = rel
        self._mats: dict[object, dict[str, Tensor]] = {
            torch.float32: stacked_adjacency(rel, norm, torch.float32, device)}

    def _matrices(self, dtype: torch.dtype) -> dict[str, Tensor]:
        if dtype not in self._mats:
            self._mats[dtype] = stacked_adjacency(self._rel, self.norm, dtype, self.device)
        return self._mats[dtype]

    def __call__(self, h_user: Tensor, h_item: Tensor) -> tuple[Tensor, Tensor]:
        _check_inputs(self, h_user, h_item)
        return self._users(h_item), self._items(h_user)

    def user_side(self, h_item: Tensor) -> Tensor:
        _check_side(self, "item", h_item)
        return self._users(h_item)

    def item_side(self, h_user: Tensor) -> Tensor:
        _check_side(self, "user", h_user)
        return self._items(h_user)

    def item_mean(self, h_user: Tensor) -> Tensor:
        _check_side(self, "user", h_user)
        if (h_user.dtype, "mean") not in self._mats:
            self._mats[(h_user.dtype, "mean")] = mean_item_adjacency(self._rel, self.norm, h_user.dtype, self.device)
        m = self._mats[(h_user.dtype, "mean")]
        return _StackedSpMM.apply(m["iu"], m["iu_t"], h_user.contiguous())

    def _users(self, h_item: Tensor) -> Tensor:
        m = self._matrices(h_item.dtype)
        return _StackedSpMM.apply(m["ui"], m["ui_t"], h_item.contiguous()).view(self.n_behaviors, self.n_users, -1)

    def _items(self, h_user: Tensor) -> Tensor:
        m = self._matrices(h_user.dtype)
        return _StackedSpMM.apply(m["iu"], m["iu_t"], h_user.contiguous()).view(self.n_behaviors, self.n_items, -1)

    def __repr__(self) -> str:
        return (f"TorchPropagator(relations={list(self.names)}, edges={self.n_edges}, norm={self.norm!r}, "
                f"device={self.device})")


class DGLPropagator:
    """DGL backend: ``HeteroGraphConv`` of parameter-free normalised sums, outputs stacked per relation."""

    backend = "dgl"

    def __init__(self, rel: Relations, norm: str):
        import_dgl()
        from dgl.nn import HeteroGraphConv  # noqa: PLC0415  (lazy: DGL is optional)

        self.n_users, self.n_items, self.n_behaviors = rel.n_users, rel.n_items, rel.n_relations
        self.names, self.norm, self.device = rel.names, norm, torch.device("cpu")
        self.n_edges = rel.n_edges()
        self._set_threads, self._threads = import_dgl().utils.set_num_threads, None
        self.graph = build_heterograph(rel)
        mods = {et: _NormalisedSum(self.graph[src, et, dst], norm) for src, et, dst in self.graph.canonical_etypes}
        # HeteroGraphConv visits relations in g.canonical_etypes order (sorted by DGL); stack in ours.
        dst_order = {nt: [et for _, et, d in self.graph.canonical_etypes if d == nt] for nt in (USER, ITEM)}
        want = {ITEM: list(rel.names), USER: [REVERSE_PREFIX + n for n in rel.names]}
        self.conv = HeteroGraphConv(mods, aggregate=_StackInOrder(
            {nt: [dst_order[nt].index(et) for et in want[nt]] for nt in (USER, ITEM)}))
        self._dst_etypes = dst_order
        self._rel, self._mean, self._plans = rel, {}, {}

    def __call__(self, h_user: Tensor, h_item: Tensor) -> tuple[Tensor, Tensor]:
        _check_inputs(self, h_user, h_item)
        self._follow_torch_threads()
        return self._side(USER, h_item), self._side(ITEM, h_user)

    def user_side(self, h_item: Tensor) -> Tensor:
        _check_side(self, "item", h_item)
        self._follow_torch_threads()
        return self._side(USER, h_item)

    def item_side(self, h_user: Tensor) -> Tensor:
        _check_side(self, "user", h_user)
        self._follow_torch_threads()
        return self._side(ITEM, h_user)

    def item_mean(self, h_user: Tensor) -> Tensor:
        _check_side(self, "user", h_user)
        self._follow_torch_threads()
        # DGL 2.1's weighted SpMM (u_mul_e_sum) has no fast CPU kernel (about 12x its copy_u_sum at
        # IJCAI-15 size): the merged product is the torch backend's CSR product
        if (h_user.dtype, "mean") not in self._mean:
            self._mean[(h_user.dtype, "mean")] = mean_item_adjacency(self._rel, self.norm, h_user.dtype, self.device)
        m = self._mean[(h_user.dtype, "mean")]
        return _StackedSpMM.apply(m["iu"], m["iu_t"], h_user.contiguous())

    def _side(self, dst: str, h_src: Tensor) -> Tensor:
        """The relation modules of one destination type, as ``self.conv`` runs and stacks them, in
        one autograd node (:class:`_RelationSums`): the same products bit for bit, forward and
        backward, without a node per operation or the stack's copy."""
        if dst not in self._plans:
            self._plans[dst] = _SidePlan(self, dst)
        plan = self._plans[dst]
        return _RelationSums.apply(plan, *([h_src] * len(plan.gidx)))

    def _follow_torch_threads(self) -> None:
        """Give DGL's kernels torch's thread count (``--threads``). libdgl links the system libgomp;
        where the loader resolves it to torch's bundled copy (the pinned wheels here) the two share
        one count anyway, where it does not ``torch.set_num_threads`` would not reach DGL's."""
        n = torch.get_num_threads()
        if n != self._threads:
            self._set_threads(n)
            self._threads = n

    def __repr__(self) -> str:
        return f"DGLPropagator(relations={list(self.names)}, edges={self.n_edges}, norm={self.norm!r})"


class _SidePlan:
    """What :class:`_RelationSums` needs for one destination type: per relation, in the graph's
    canonical order (the order ``HeteroGraphConv`` runs them), its graph index and reverse, its
    module (the degree scalings) and its place in the caller's relation order."""

    def __init__(self, prop: "DGLPropagator", dst: str):
        src = ITEM if dst == USER else USER
        etypes = prop._dst_etypes[dst]
        order = prop.conv.agg_fn.order[dst]  # stacked position j holds canonical relation order[j]
        self.position = [order.index(c) for c in range(len(etypes))]
        self.gidx = [prop.graph[src, et, dst]._graph for et in etypes]
        self.reverse = [g.reverse() for g in self.gidx]
        self.mods = [prop.conv.mods[et] for et in etypes]
        self.n_dst = prop.n_users if dst == USER else prop.n_items
        from dgl._sparse_ops import _gspmm  # noqa: PLC0415  (DGL 2.1's g-SpMM without its autograd wrapper)

        self.gspmm = _gspmm


class _RelationSums(torch.autograd.Function):
    """``out[position[c]] = c_dst * A_c^T (c_src * h)`` for every relation c of one destination type.

    The forward pass runs each relation's :class:`_NormalisedSum` arithmetic (DGL's ``copy_u``/``sum``
    g-SpMM between the two degree scalings) and writes the result into its slot of one (K, N, d)
    tensor. The backward pass runs what autograd runs for those modules (DGL's ``GSpMM`` backward,
    the g-SpMM on the reversed graph index, between the same two scalings) and returns one gradient
    per relation for the K copies of ``h`` the node takes: the engine adds them into ``h``'s
    gradient in that order, last relation first, as it adds the per-relation nodes' gradients.
    """

    @staticmethod
    def forward(ctx, plan: _SidePlan, *hs: Tensor) -> Tensor:  # noqa: D102
        h = hs[0]
        out = h.new_empty((len(plan.gidx), plan.n_dst, h.shape[1]))
        for c, (gidx, mod) in enumerate(zip(plan.gidx, plan.mods)):
            scale = mod.scales(h.dtype)
            y = plan.gspmm(gidx, "copy_lhs", "sum", h if scale is None else h * scale[0], None)[0]
            if scale is None:
                out[plan.position[c]].copy_(y)
            else:
                torch.mul(y, scale[1], out=out[plan.position[c]])
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        plan, grads = ctx.plan, []
        for c in reversed(range(len(plan.gidx))):
            scale = plan.mods[c].scales(grad.dtype)
            g = grad[plan.position[c]]
            g = g.contiguous() if scale is None else g * scale[1]
            d = plan.gspmm(plan.reverse[c], "copy_lhs", "sum", g, None)[0]
            grads.append(d if scale is None else d * scale[0])
        return (None, *grads)


class _NormalisedSum(torch.nn.Module):
    """One relation: :math:`h'_v = c_v \\sum_{u \\to v} c_u h_u` by DGL's fused ``copy_u``/``sum`` SpMM.

    With ``norm="sym"``, :math:`c_u` = (out-degree of u)^-1/2 and :math:`c_v` = (in-degree of v)^-1/2
    in this relation (degree 0 counts as 1), as ``GraphConv(norm='both')``; with ``"none"`` both are 1.
    The scalings are computed once (per feature dtype), not per call; the destination scaling is
    applied in place to the SpMM's fresh output, which its backward does not keep.
    ``dgl.ops.copy_u_sum`` is the g-SpMM that ``update_all(fn.copy_u, fn.sum)`` runs, without the
    message-passing frame bookkeeping (about a fifth less time per forward pass on Retailrocket).
    """

    def __init__(self, rel_graph, norm: str):
        super().__init__()
        self._spmm = import_dgl().ops.copy_u_sum
        self._deg = None if norm == "none" else (rel_graph.out_degrees(), rel_graph.in_degrees())
        self._scales: dict[torch.dtype, tuple[Tensor, Tensor]] = {}

    def scales(self, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
        """(source, destination) degree scalings as (N, 1) columns; None with ``norm="none"``."""
        if self._deg is None:
            return None
        if dtype not in self._scales:
            self._scales[dtype] = tuple(d.to(torch.float64).clamp(min=1).pow(-0.5).to(dtype).unsqueeze(1)
                                        for d in self._deg)
        return self._scales[dtype]

    def forward(self, graph, feat: tuple[Tensor, Tensor]) -> Tensor:  # noqa: D102
        h_src = feat[0]
        scale = self.scales(h_src.dtype)
        out = self._spmm(graph, h_src if scale is None else h_src * scale[0])
        return out if scale is None else out.mul_(scale[1])


class _StackInOrder:
    """``HeteroGraphConv`` aggregate: the per-relation outputs of a node type stacked (K, N, d) in a given order."""

    def __init__(self, order: dict[str, list[int]]):
        self.order = order

    def __call__(self, tensors: list[Tensor], dsttype: str) -> Tensor:
        return torch.stack([tensors[j] for j in self.order[dsttype]], 0)


def _check_side(p, side: str, h: Tensor) -> None:
    n = p.n_users if side == "user" else p.n_items
    if h.dim() != 2 or h.shape[0] != n:
        raise CmlError(f"propagator expects {side} features of shape ({n}, d), got {tuple(h.shape)}")
    if not same_device(h.device, p.device):
        raise CmlError(f"{side} features on {h.device} but the {p.backend} propagator is on {p.device}; "
                       f"build it with device={h.device}")


def _check_inputs(p, h_user: Tensor, h_item: Tensor) -> None:
    if h_user.dim() != 2 or h_item.dim() != 2 or h_user.shape[0] != p.n_users or h_item.shape[0] != p.n_items:
        raise CmlError(f"propagator expects features of shape ({p.n_users}, d) and ({p.n_items}, d), "
                       f"got {tuple(h_user.shape)} and {tuple(h_item.shape)}")
    if not same_device(h_user.device, p.device) or not same_device(h_item.device, p.device):
        raise CmlError(f"features on {h_user.device}/{h_item.device} but the {p.backend} propagator "
                       f"is on {p.device}; build it with device={h_user.device}")


def same_device(a: torch.device, b: torch.device) -> bool:
    """Equal devices, treating an unset CUDA index as matching any index."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def build_propagator(n_users: int, n_items: int, edges: Sequence[tuple[np.ndarray, np.ndarray]], *,
                     backend: str = "auto", norm: str = "sym", device: str | torch.device = "cpu",
                     names: Sequence[str] | None = None) -> Propagator:
    """A propagator over K relations given as (users, items) id arrays; see the module docstring."""
    if norm not in NORMS:
        raise CmlError(f"unknown graph normalisation {norm!r}; expected one of {list(NORMS)}")
    chosen = resolve_backend(backend, device)
    rel = prepare_relations(n_users, n_items, edges, names)
    if chosen == "dgl":
        return DGLPropagator(rel, norm)
    return TorchPropagator(rel, norm, torch.device(device))


def propagator_for_dataset(ds, *, backend: str = "auto", norm: str = "sym", device: str | torch.device = "cpu",
                           merge: bool = False, behaviors: Sequence[int] | None = None) -> Propagator:
    """A propagator over a :class:`~cml_dgl.data.dataset.Dataset`'s training edges.

    ``behaviors`` selects behavior indices (default: all, target last), e.g. ``[K-1]`` for target
    only; ``merge=True`` makes a single relation, the deduplicated union of the selected behaviors
    (LightGCN on merged behaviors).
    """
    ks = list(range(ds.n_behaviors)) if behaviors is None else [int(k) for k in behaviors]
    if not ks or any(k < 0 or k >= ds.n_behaviors for k in ks) or len(set(ks)) != len(ks):
        raise CmlError(f"behaviors must be distinct indices in [0, {ds.n_behaviors}), got {behaviors}")
    edges = [ds.edges(k) for k in ks]
    names = [ds.behaviors[k] for k in ks]
    if merge:
        edges = [(np.concatenate([u for u, _ in edges]), np.concatenate([i for _, i in edges]))]
        names = ["+".join(names)]
    return build_propagator(ds.n_users, ds.n_items, edges, backend=backend, norm=norm, device=device, names=names)
