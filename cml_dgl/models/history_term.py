"""The user's own auxiliary-behavior items as a score term (CML's ``history`` option).

With :math:`x_k(u, i) = 1` when user u has a training edge of auxiliary behavior k with item i
(0 otherwise) and learned weights :math:`a_k`, the term added to CML's score is

.. math::  h(u, i) = \\sum_{k < K} (a_k + c_{i,k})\\, x_k(u, i)

where :math:`c_{i,k}` (config ``history_item_weights``, else 0) is a learned per-item correction:
how much more or less than the average item a view or cart of item i leads to its purchase.

An embedding product cannot say "this user viewed this very item": on data whose held-out
purchases stay in the users' views and carts (the MB-CGCN Tmall split: 83 % of its test items),
that fact decides most rankings, and rules built on it beat every trained model there.

:func:`keeps_history` tells whether a dataset's held-out pairs keep their auxiliary edges
(``held_out_auxiliary`` keep or before, as ``cml preprocess`` records it); where the split removed
them (the CML paper's splits, ``drop``), a learned :math:`a_k` could only learn that convention of
the evaluation, so ``history: auto`` leaves the term out there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from cml_dgl.errors import CmlError
from cml_dgl.models.topk import csr_row_entries

HISTORY_CHOICES = ("none", "auto", "always")


def keeps_history(ds: Any) -> bool:
    """True when the dataset's held-out pairs keep their auxiliary training edges (``keep`` or
    ``before`` in ``meta.json``'s ``options.stats.held_out_auxiliary``, else its option). Where no
    validation item was carved (``--no-valid``, or a published validation split) the held-out pairs
    are the published test split's, and its measured convention decides (``test_pairs_in_auxiliary``:
    ``kept`` or ``removed``)."""
    options = getattr(ds, "options", None) or {}
    stats = options.get("stats") or {}
    mode = stats.get("held_out_auxiliary") or options.get("held_out_auxiliary")
    if mode in (None, "auto"):
        published = (stats.get("test_pairs_in_auxiliary") or {}).get("test_split")
        mode = {"kept": "keep", "removed": "drop"}.get(published)
    return mode in ("keep", "before")


def history_enabled(cfg: dict[str, Any], ds: Any) -> bool:
    """Whether config ``history`` (none | auto | always) adds the term on dataset ``ds``."""
    value = cfg["history"]
    if value not in HISTORY_CHOICES:
        raise CmlError(f"config history must be one of {', '.join(HISTORY_CHOICES)}, got {value!r}")
    return ds.n_behaviors > 1 and (value == "always" or (value == "auto" and keeps_history(ds)))


class UserHistory:
    """The (user, item) pairs with an auxiliary edge, sorted by key ``u * I + i``, with the
    indicator of their behaviors (n, K-1) and CSR row offsets (U+1,): the term of any pair by a
    binary search, the term of a user's whole row by a gather. Not a module: it is rebuilt from
    the dataset, and only the weights are parameters."""

    def __init__(self, keys: Tensor, indicator: Tensor, indptr: Tensor, n_users: int, n_items: int):
        self.keys, self.indicator, self.indptr = keys, indicator, indptr
        self.n_users, self.n_items = n_users, n_items

    @classmethod
    def from_dataset(cls, ds: Any, device: torch.device | str = "cpu") -> "UserHistory":
        n_aux = ds.n_behaviors - 1
        parts = []
        for k in range(n_aux):
            u, i = ds.edges(k)
            parts.append((np.unique(u * ds.n_items + i), k))
        keys = np.concatenate([p for p, _ in parts]) if parts else np.zeros(0, np.int64)
        beh = np.concatenate([np.full(len(p), k, np.int64) for p, k in parts]) if parts else np.zeros(0, np.int64)
        uniq, inverse = np.unique(keys, return_inverse=True)
        indicator = np.zeros((len(uniq), max(n_aux, 1)), dtype=np.float32)
        indicator[inverse.reshape(-1), beh] = 1.0
        indptr = np.zeros(ds.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(uniq // ds.n_items, minlength=ds.n_users), out=indptr[1:])
        return cls(torch.from_numpy(uniq), torch.from_numpy(indicator[:, :n_aux]), torch.from_numpy(indptr),
                   ds.n_users, ds.n_items).to(device)

    def to(self, device: torch.device | str) -> "UserHistory":
        return UserHistory(self.keys.to(device), self.indicator.to(device), self.indptr.to(device),
                           self.n_users, self.n_items)

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def __len__(self) -> int:
        return len(self.keys)

    def pairs(self, weights: Tensor, users: Tensor, items: Tensor) -> Tensor:
        """h(u, i) for ``users`` (n,) and ``items`` (n,) or (n, m); ``weights`` (K-1,) shared by
        every item, or (I, K-1) per item."""
        u = users.reshape(-1, *([1] * (items.dim() - 1))) if items.dim() > 1 else users
        q = u * self.n_items + items
        if len(self.keys) == 0:
            return weights.new_zeros(q.shape)
        pos = torch.searchsorted(self.keys, q).clamp_(max=len(self.keys) - 1)
        hit = self.keys[pos] == q
        if weights.dim() == 2:
            return (self.indicator[pos] * weights[items]).sum(-1) * hit
        return (self.indicator[pos] @ weights) * hit

    def rows(self, weights: Tensor, users: Tensor) -> Tensor:
        """h(u, ·) of ``users`` (n,): (n, I)."""
        out = weights.new_zeros((len(users), self.n_items))
        row, entry = csr_row_entries(self.indptr, users)
        if len(entry):
            cols = self.keys[entry] % self.n_items
            w = weights[cols] if weights.dim() == 2 else weights
            out[row, cols] = (self.indicator[entry] * w).sum(-1)
        return out
