"""From per-behavior edge lists to the structures the message-passing backends run on.

Every relation k is a binary bipartite matrix :math:`A_k \\in \\{0,1\\}^{U \\times I}` (duplicate
edges collapse to one). Two normalisations are offered, both without self loops:

* ``"sym"``: :math:`\\hat A_k = D_{u,k}^{-1/2} A_k D_{i,k}^{-1/2}` with the degrees of relation k
  only; a node without edges in k keeps a zero row (SSLRec, LightGCN);
* ``"none"``: :math:`\\hat A_k = A_k`, plain neighbour sums (the authors' official code).

``build_heterograph`` imports DGL when called, never at import time: this module is used by the
pure-torch backend on machines without DGL.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from cml_dgl.errors import CmlError

NORMS = ("sym", "none")
USER, ITEM = "user", "item"
REVERSE_PREFIX = "rev_"


@dataclass(frozen=True)
class Relations:
    """Validated, deduplicated edges of K relations; ``users[k]``/``items[k]`` sorted by (user, item)."""

    n_users: int
    n_items: int
    names: tuple[str, ...]
    users: tuple[np.ndarray, ...]
    items: tuple[np.ndarray, ...]

    @property
    def n_relations(self) -> int:
        return len(self.names)

    def n_edges(self) -> list[int]:
        return [len(u) for u in self.users]


def prepare_relations(n_users: int, n_items: int, edges: Sequence[tuple[np.ndarray, np.ndarray]],
                      names: Sequence[str] | None = None) -> Relations:
    """Check ids and names, drop duplicate edges, sort each relation by (user, item)."""
    if n_users < 1 or n_items < 1:
        raise CmlError(f"a graph needs at least one user and one item, got {n_users} users, {n_items} items")
    if len(edges) < 1:
        raise CmlError("a graph needs at least one relation (behavior), got none")
    names = tuple(f"b{k}" for k in range(len(edges))) if names is None else tuple(str(n) for n in names)
    if len(names) != len(edges):
        raise CmlError(f"{len(names)} relation names given for {len(edges)} edge lists")
    etypes = list(names) + [REVERSE_PREFIX + n for n in names]
    if len(set(etypes)) != len(etypes) or any(not n for n in names):
        raise CmlError(f"relation names must be non-empty and distinct, also from their reverses "
                       f"'{REVERSE_PREFIX}<name>'; got {list(names)}")
    us, its = [], []
    for name, (u, i) in zip(names, edges):
        u = np.asarray(u).reshape(-1)
        i = np.asarray(i).reshape(-1)
        if len(u) != len(i):
            raise CmlError(f"relation {name!r}: {len(u)} user ids but {len(i)} item ids")
        if u.size and (u.dtype.kind not in "iu" or i.dtype.kind not in "iu"):
            raise CmlError(f"relation {name!r}: ids must be integers, got {u.dtype} and {i.dtype}")
        u = u.astype(np.int64, copy=False)
        i = i.astype(np.int64, copy=False)
        if u.size and (u.min() < 0 or u.max() >= n_users):
            raise CmlError(f"relation {name!r}: user ids outside [0, {n_users})")
        if i.size and (i.min() < 0 or i.max() >= n_items):
            raise CmlError(f"relation {name!r}: item ids outside [0, {n_items})")
        key = np.unique(u * n_items + i)
        us.append(key // n_items)
        its.append(key % n_items)
    return Relations(int(n_users), int(n_items), names, tuple(us), tuple(its))


def edge_weights(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, norm: str) -> np.ndarray:
    """Per-edge values of :math:`\\hat A`: 1, or :math:`(d_u d_i)^{-1/2}` with degrees in this relation."""
    if norm not in NORMS:
        raise CmlError(f"unknown graph normalisation {norm!r}; expected one of {list(NORMS)}")
    if norm == "none":
        return np.ones(len(users), dtype=np.float64)
    deg_u = np.bincount(users, minlength=n_users).astype(np.float64)
    deg_i = np.bincount(items, minlength=n_items).astype(np.float64)
    return 1.0 / np.sqrt(deg_u[users] * deg_i[items])


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int],
         dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # (row, col) pairs are unique (relations are deduplicated), so one key sorts like lexsort, 4x faster
    order = np.argsort(rows.astype(np.int64) * shape[1] + cols)
    rows, cols, vals = rows[order], cols[order], vals[order]
    crow = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=crow[1:])
    # 32-bit indices where they fit: the CPU kernel otherwise converts them to 32 bits at every product
    index = np.int32 if max(shape[0], shape[1], len(cols)) < 2 ** 31 else np.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        # torch.from_numpy gives an empty array stride 0, which the invariant check refuses
        col_t, val_t = (torch.from_numpy(x) if len(x) else torch.from_numpy(x).new_zeros(0)
                        for x in (cols.astype(index), vals))
        return torch.sparse_csr_tensor(torch.from_numpy(crow.astype(index)), col_t, val_t, size=shape,
                                       dtype=dtype, check_invariants=True).to(device)


def stacked_adjacency(rel: Relations, norm: str, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The K relations as four sparse CSR matrices, so one matmul serves all behaviors.

    ``ui`` = :math:`[\\hat A_1; \\dots; \\hat A_K]` (K·U × I) and ``iu`` = :math:`[\\hat A_1^T; \\dots;
    \\hat A_K^T]` (K·I × U) compute the forward pass; their transposes ``ui_t`` (I × K·U) and ``iu_t``
    (U × K·I) compute the backward pass without transposing a sparse tensor at run time.
    """
    U, I, K = rel.n_users, rel.n_items, rel.n_relations
    vals = [edge_weights(u, i, U, I, norm) for u, i in zip(rel.users, rel.items)]
    w = np.concatenate(vals) if vals else np.zeros(0)
    u_off = np.concatenate([u + k * U for k, u in enumerate(rel.users)])
    i_off = np.concatenate([i + k * I for k, i in enumerate(rel.items)])
    u_all = np.concatenate(rel.users)
    i_all = np.concatenate(rel.items)
    dev = torch.device(device)
    return {
        "ui": _csr(u_off, i_all, w, (K * U, I), dtype, dev),
        "ui_t": _csr(i_all, u_off, w, (I, K * U), dtype, dev),
        "iu": _csr(i_off, u_all, w, (K * I, U), dtype, dev),
        "iu_t": _csr(u_all, i_off, w, (U, K * I), dtype, dev),
    }


def mean_relation(rel: Relations, norm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean of the K relations, :math:`\\bar A = \\tfrac1K \\sum_k \\hat A_k`, as (users, items,
    float64 values) of its distinct non-zero entries, sorted by (user, item)."""
    U, I, K = rel.n_users, rel.n_items, rel.n_relations
    keys = np.concatenate([u * I + i for u, i in zip(rel.users, rel.items)]) if K else np.zeros(0, np.int64)
    vals = np.concatenate([edge_weights(u, i, U, I, norm) for u, i in zip(rel.users, rel.items)]) / K
    uniq, inv = np.unique(keys, return_inverse=True)
    return uniq // I, uniq % I, np.bincount(inv, weights=vals, minlength=len(uniq))


def mean_item_adjacency(rel: Relations, norm: str, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """:math:`\\bar A^T` (I × U, ``"iu"``) and :math:`\\bar A` (U × I, ``"iu_t"``, its backward) as
    CSR matrices: one product gives the items' mean over behaviors, :math:`\\bar A^T H_{user} =
    \\tfrac1K \\sum_k \\hat A_k^T H_{user}`."""
    u, i, w = mean_relation(rel, norm)
    dev = torch.device(device)
    return {"iu": _csr(i, u, w, (rel.n_items, rel.n_users), dtype, dev),
            "iu_t": _csr(u, i, w, (rel.n_users, rel.n_items), dtype, dev)}


def import_dgl():
    """Import DGL (pytorch backend) or raise the original error; only the DGL code path calls this."""
    os.environ.setdefault("DGLBACKEND", "pytorch")
    import dgl  # noqa: PLC0415  (lazy on purpose: cml_dgl works without DGL)

    return dgl


def build_heterograph(rel: Relations):
    """A DGL heterograph with, per relation ``b``, edges (user, b, item) and (item, rev_b, user).

    Node counts are fixed by ``num_nodes_dict``, so isolated users/items and relations with no
    edges are kept. The graph lives on the CPU (DGL 2.1 has no reachable CUDA build).
    """
    dgl = import_dgl()
    data = {}
    for name, u, i in zip(rel.names, rel.users, rel.items):
        tu, ti = torch.from_numpy(u), torch.from_numpy(i)
        data[(USER, name, ITEM)] = (tu, ti)
        data[(ITEM, REVERSE_PREFIX + name, USER)] = (ti, tu)
    g = dgl.heterograph(data, num_nodes_dict={USER: rel.n_users, ITEM: rel.n_items}, idtype=torch.int64)
    g.create_formats_()  # build CSR and CSC once: otherwise every backward pass converts formats
    return g

