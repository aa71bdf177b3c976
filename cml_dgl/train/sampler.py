"""Vectorised samplers: BPR triples per behavior, meta-user batches, contrastive user samples.

Every draw comes from one ``numpy.random.Generator``; there is no Python loop over users or
interactions (loops run over behaviors and over rejection rounds only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cml_dgl.data.dataset import Dataset
from cml_dgl.errors import CmlError


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

    def __len__(self) -> int:
        return len(self.users)

    def batch(self, start: int, stop: int) -> list[Triples]:
        out = []
        u = self.users[start:stop]
        for k in range(self.pos.shape[0]):
            p, n = self.pos[k, start:stop], self.neg[k, start:stop]
            keep = p >= 0
            out.append(Triples(u[keep], p[keep], n[keep]))
        return out


def cml_epoch_samples(ds: Dataset, index: list[EdgeIndex], rng: np.random.Generator) -> EpochSamples:
    """The official sampling, vectorised (cml-spec 3.1): one sample per target interaction.

    For the target behavior the positive is the interaction's item; for an auxiliary behavior k
    it is a uniform draw among the user's behavior-k items. Negatives are uniform among items the
    user has no behavior-k edge with.
    """
    K = ds.n_behaviors
    tu, ti = ds.edges(K - 1)
    order = rng.permutation(len(tu))
    users, target_items = tu[order], ti[order]
    pos = np.empty((K, len(users)), dtype=np.int64)
    neg = np.empty((K, len(users)), dtype=np.int64)
    for k in range(K):
        pos[k] = target_items if k == K - 1 else index[k].random_neighbor(users, rng)
        neg[k] = index[k].sample_negatives(users, rng)
    return EpochSamples(users, pos, neg)


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
