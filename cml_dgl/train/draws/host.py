"""Host draws (numpy): BPR triples per behavior, meta-user batches, contrastive user samples.

Every draw comes from one ``numpy.random.Generator``; there is no Python loop over users or
interactions (loops run over behaviors and over rejection rounds only). :class:`HostDraws` draws
a whole epoch on the host and copies it to the training device once.

Copying each step's arrays as the step runs would cost one blocking transfer per array and step on
a GPU; instead the whole epoch is drawn first (the draws do not depend on the model, so their order
and values are those of a step-by-step loop), every array is registered with an :class:`IndexPack`
and the pack moves once. Steps then read device views (slices of one flat tensor): no per-step host
round trip. An epoch's indices take about (3K + 2) x 8 bytes per target interaction, plus the meta
users' triples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cml_dgl.data.dataset import Dataset
from cml_dgl.errors import CmlError
from cml_dgl.train.draws.types import CMLStep, DeviceTriples


class EdgeIndex:
    """The training edges of one behavior as a user-sorted CSR plus sorted ``user*I+item`` keys."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> None:
        self.n_users, self.n_items = n_users, n_items
        keys = np.unique(users.astype(np.int64) * n_items + items.astype(np.int64))
        self.keys = keys
        u = keys // n_items
        self.indices = (keys % n_items).astype(np.int64)
        self.indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(u, minlength=n_users), out=self.indptr[1:])

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        q = users.astype(np.int64) * self.n_items + items.astype(np.int64)
        pos = np.searchsorted(self.keys, q)
        pos[pos == len(self.keys)] = 0
        return self.keys[pos] == q if len(self.keys) else np.zeros(len(q), dtype=bool)

    def random_neighbor(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniformly drawn neighbour per user; -1 where the user has none."""
        deg = self.degree[users]
        has = deg > 0
        out = np.full(len(users), -1, dtype=np.int64)
        offs = (rng.random(int(has.sum())) * deg[has]).astype(np.int64)
        out[has] = self.indices[self.indptr[users[has]] + offs]
        return out

    def sample_negatives(self, users: np.ndarray, rng: np.random.Generator,
                         max_rounds: int = 1000) -> np.ndarray:
        """Items drawn uniformly among those the user has no edge with (rejection, in bulk)."""
        neg = rng.integers(0, self.n_items, size=len(users), dtype=np.int64)
        bad = np.flatnonzero(self.contains(users, neg))
        for _ in range(max_rounds):
            if len(bad) == 0:
                return neg
            neg[bad] = rng.integers(0, self.n_items, size=len(bad), dtype=np.int64)
            bad = bad[self.contains(users[bad], neg[bad])]
        raise CmlError("negative sampling failed: some users interacted with (almost) every item")


def edge_indices(ds: Dataset) -> list[EdgeIndex]:
    return [EdgeIndex(*ds.edges(k), ds.n_users, ds.n_items) for k in range(ds.n_behaviors)]


def unbought_index(ds: Dataset) -> EdgeIndex:
    """Each user's items with an auxiliary edge and no target edge (viewed, carted... not bought):
    the pool of config ``history_negatives``."""
    K = ds.n_behaviors
    aux = [ds.edges(k) for k in range(K - 1)]
    u = np.concatenate([a[0] for a in aux]) if aux else np.zeros(0, np.int64)
    i = np.concatenate([a[1] for a in aux]) if aux else np.zeros(0, np.int64)
    bought = EdgeIndex(*ds.edges(K - 1), ds.n_users, ds.n_items)
    keep = ~bought.contains(u, i) if len(u) else np.zeros(0, dtype=bool)
    return EdgeIndex(u[keep], i[keep], ds.n_users, ds.n_items)


def history_negatives(neg: np.ndarray, users: np.ndarray, pool: EdgeIndex, fraction: float,
                      rng: np.random.Generator) -> np.ndarray:
    """``neg`` with a ``fraction`` of its entries (each with that probability) replaced by a
    uniform draw among the user's ``pool`` items, where the user has any."""
    pick = np.flatnonzero(rng.random(len(users)) < fraction)
    cand = pool.random_neighbor(users[pick], rng)
    has = cand >= 0
    out = neg.copy()
    out[pick[has]] = cand[has]
    return out


@dataclass
class Triples:
    """BPR triples of one behavior."""

    users: np.ndarray
    pos: np.ndarray
    neg: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class EpochSamples:
    """One epoch of CML training samples, aligned with the shuffled target interactions.

    ``pos[k, j]`` / ``neg[k, j]`` are behavior k's positive and negative for sample j; ``pos`` is
    -1 where user ``users[j]`` has no behavior-k edge (that row is dropped for k).
    """

    users: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    #: with ``aux_draws: edges``, behavior k's own pass over its edges (k < K - 1), which replaces
    #: its rows above: the batch of target rows [start, stop) takes the same share of each pass
    passes: list[Triples] | None = None

    def __len__(self) -> int:
        return len(self.users)

    def batch(self, start: int, stop: int) -> list[Triples]:
        out = []
        u = self.users[start:stop]
        for k in range(self.pos.shape[0]):
            if self.passes is not None and k < len(self.passes):
                t = self.passes[k]
                lo, hi = (pass_offset(r, len(self), len(t)) for r in (start, min(stop, len(self))))
                out.append(Triples(t.users[lo:hi], t.pos[lo:hi], t.neg[lo:hi]))
                continue
            p, n = self.pos[k, start:stop], self.neg[k, start:stop]
            keep = p >= 0
            out.append(Triples(u[keep], p[keep], n[keep]))
        return out


def pass_offset(row, n_rows: int, n_edges: int):
    """Where target row ``row`` of ``n_rows`` falls in an auxiliary behavior's pass over its
    ``n_edges`` edges (an int, or an array of rows): the batch of target rows [a, b) takes the pass's
    rows [pass_offset(a), pass_offset(b)), the same share, so the pass ends with the epoch
    (``aux_draws: edges``)."""
    return row * n_edges // n_rows


def cml_epoch_samples(ds: Dataset, index: list[EdgeIndex], rng: np.random.Generator,
                      pool: EdgeIndex | None = None, fraction: float = 0.0,
                      aux_draws: str = "target") -> EpochSamples:
    """The official sampling, vectorised (cml-spec 3.1): one sample per target interaction.

    For the target behavior the positive is the interaction's item; for an auxiliary behavior k
    it is a uniform draw among the user's behavior-k items. Negatives are uniform among items the
    user has no behavior-k edge with; with ``pool`` and ``fraction`` > 0 (config
    ``history_negatives``) that share of the target's negatives is drawn among the user's ``pool``
    items instead (:func:`history_negatives`), after the uniform draws. With ``aux_draws="edges"``
    each auxiliary behavior is instead one shuffled pass over all its edges with a uniform negative
    each (:func:`pair_epoch_samples`, drawn after the target's), shared out over the epoch's batches
    in proportion (:func:`pass_offset`).
    """
    K = ds.n_behaviors
    tu, ti = ds.edges(K - 1)
    order = rng.permutation(len(tu))
    users, target_items = tu[order], ti[order]
    pos = np.empty((K, len(users)), dtype=np.int64)
    neg = np.empty((K, len(users)), dtype=np.int64)
    per_target = range(K) if aux_draws == "target" else (K - 1,)
    pos[:K - 1] = -1
    for k in per_target:
        pos[k] = target_items if k == K - 1 else index[k].random_neighbor(users, rng)
        neg[k] = index[k].sample_negatives(users, rng)
    if pool is not None and fraction > 0:
        neg[K - 1] = history_negatives(neg[K - 1], users, pool, fraction, rng)
    passes = None if aux_draws == "target" else [pair_epoch_samples(index[k], rng) for k in range(K - 1)]
    return EpochSamples(users, pos, neg, passes)


def meta_triples(users: np.ndarray, index: EdgeIndex, n_samples: int,
                 rng: np.random.Generator) -> Triples:
    """For each user, ``min(n_samples, degree)`` positives drawn with replacement, as many negatives."""
    deg = index.degree[users]
    n = np.minimum(deg, n_samples)
    rep = np.repeat(users.astype(np.int64), n)
    offs = (rng.random(len(rep)) * np.repeat(deg, n)).astype(np.int64)
    pos = index.indices[index.indptr[rep] + offs]
    return Triples(rep, pos, index.sample_negatives(rep, rng))


def pair_epoch_samples(index: EdgeIndex, rng: np.random.Generator) -> Triples:
    """Every edge once, shuffled, with one uniform negative each (for MF / LightGCN)."""
    u = np.repeat(np.arange(index.n_users, dtype=np.int64), index.degree)
    order = rng.permutation(len(u))
    u, i = u[order], index.indices[order]
    return Triples(u, i, index.sample_negatives(u, rng))


def contrast_sample(users: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """floor(ratio * n) entries of ``users`` drawn without replacement of positions (cml-spec 3.2)."""
    n = int(len(users) * ratio)
    if n < 2:
        return users[:0]
    return users[rng.choice(len(users), size=n, replace=False)]


def default_meta_users(ds: Dataset, rng: np.random.Generator) -> np.ndarray:
    """The documented rule for datasets without a published meta-user list.

    Meta users are the users with a target (purchase) edge and at least one auxiliary edge in
    training ("multi-behavior users", as 1,989 of the 2,008 published Retailrocket meta users
    are), shuffled with the run's seed. If no user qualifies, every user with a target edge is used.
    """
    K = ds.n_behaviors
    has = np.zeros((K, ds.n_users), dtype=bool)
    for k in range(K):
        has[k, ds.edges(k)[0]] = True
    chosen = np.flatnonzero(has[K - 1] & has[: K - 1].any(axis=0)) if K > 1 else np.array([], int)
    if len(chosen) == 0:
        chosen = np.flatnonzero(has[K - 1])
    if len(chosen) == 0:
        raise CmlError("dataset has no training purchases: nothing to train on")
    return rng.permutation(chosen)


class MetaPointer:
    """Cycles through the meta users ``meta_batch`` at a time (the code's pointer, without B4)."""

    def __init__(self, users: np.ndarray, batch: int) -> None:
        self.users, self.batch, self.pos = users, batch, 0

    def next(self) -> np.ndarray:
        n = len(self.users)
        take = np.arange(self.pos, self.pos + min(self.batch, n)) % n
        self.pos = int((self.pos + self.batch) % n)
        return self.users[take]


class IndexPack:
    """Collects integer arrays on the host; :meth:`to` concatenates them and copies them once."""

    def __init__(self) -> None:
        self._arrays: list[np.ndarray] = []

    def add(self, a: np.ndarray) -> int:
        """Register ``a``; returns its handle for :meth:`PackedIndex.get`."""
        self._arrays.append(np.asarray(a, dtype=np.int64).reshape(-1))
        return len(self._arrays) - 1

    def add_triples(self, t: Triples) -> tuple[int, int, int]:
        return self.add(t.users), self.add(t.pos), self.add(t.neg)

    def to(self, device: torch.device) -> "PackedIndex":
        offsets = np.zeros(len(self._arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in self._arrays], out=offsets[1:])
        flat = np.concatenate(self._arrays) if self._arrays else np.zeros(0, dtype=np.int64)
        return PackedIndex(torch.from_numpy(flat).to(device), offsets)


class PackedIndex:
    """The device copy of an :class:`IndexPack`; ``get(handle)`` is a view, no copy."""

    def __init__(self, flat: Tensor, offsets: np.ndarray) -> None:
        self.flat, self.offsets = flat, offsets

    def get(self, handle: int) -> Tensor:
        return self.flat[int(self.offsets[handle]):int(self.offsets[handle + 1])]

    def triples(self, handles: tuple[int, int, int]) -> DeviceTriples:
        return DeviceTriples(*(self.get(h) for h in handles))


class HostDraws:
    """numpy draws on the host (the reference stream: same seed, same samples on every machine),
    one host-to-device copy per epoch."""

    def __init__(self, ds: Dataset, index: list[EdgeIndex], cfg: dict[str, Any], device: torch.device,
                 seed: int, meta_pointer: MetaPointer | None = None, with_meta: bool = False) -> None:
        self.ds, self.index, self.cfg, self.device = ds, index, cfg, device
        self.meta_pointer, self.with_meta = meta_pointer, with_meta
        self.rng = np.random.default_rng(seed)
        self.pool = unbought_index(ds) if cfg["history_negatives"] > 0 else None

    def state(self) -> dict[str, Any]:
        return {"numpy_rng": self.rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> bool:
        if "numpy_rng" not in state:
            return False
        self.rng.bit_generator.state = state["numpy_rng"]
        return True

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def cml_steps(self) -> list[CMLStep]:
        """Every draw of the epoch's steps, in the order the steps consumed them one by one (none
        depends on the model), moved to the device in one copy."""
        cfg, K = self.cfg, self.ds.n_behaviors
        samples = cml_epoch_samples(self.ds, self.index, self.rng, self.pool, cfg["history_negatives"],
                                    cfg["aux_draws"])
        B, ratio = cfg["batch_size"], cfg["cl_sample_ratio"]
        meta_k = [k if cfg["meta_bpr_per_behavior"] else K - 1 for k in range(K)]
        pack, plan = IndexPack(), []
        for start in range(0, len(samples), B):
            batch_users = samples.users[start:start + B]
            triples = [pack.add_triples(t) for t in samples.batch(start, start + B)]
            s1 = pack.add(contrast_sample(batch_users, ratio, self.rng))
            s3 = pack.add(contrast_sample(batch_users, ratio, self.rng))
            meta_handles, s2 = [], pack.add(batch_users[:0])
            if self.with_meta:
                meta_users = self.meta_pointer.next()
                meta_handles = [pack.add_triples(meta_triples(meta_users, self.index[k], cfg["meta_samples"],
                                                              self.rng)) for k in meta_k]
                s2 = pack.add(meta_users if cfg["meta_cl_all_users"] else
                              contrast_sample(meta_users, ratio, self.rng))
            plan.append((triples, s1, s3, meta_handles, s2))
        dev = pack.to(self.device)
        return [CMLStep([dev.triples(h) for h in tr], dev.get(s1), dev.get(s3), [dev.triples(h) for h in mt],
                        dev.get(s2)) for tr, s1, s3, mt, s2 in plan]

    def pair_triples(self) -> DeviceTriples:
        pack = IndexPack()
        handles = pack.add_triples(pair_epoch_samples(self.index[0], self.rng))
        return pack.to(self.device).triples(handles)
