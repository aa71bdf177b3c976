"""Device draws (torch): the samplers of :mod:`cml_dgl.train.draws.host` in torch, drawing on the training device.

Same distributions as the host samplers (uniform positives among a user's behavior-k items,
uniform negatives among the items the user has no behavior-k edge with, contrast samples drawn
without replacement from each batch, ``min(S, degree)`` meta draws per meta user), but every draw
comes from one ``torch.Generator`` on the device, so the number streams differ from the numpy ones.

An epoch is drawn in bulk, not step by step: each quantity is computed for all steps at once and
laid out step after step in one flat device tensor, with its per-step offsets. The draw synchronises
with the host a bounded number of times per epoch, independent of the number of steps (one per
rejection round of the negative sampler, one per behavior for the rows to drop, one for the meta
draws' total, one to read the offsets); the steps then only read views (slices) of device tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from cml_dgl.errors import CmlError
from cml_dgl.train.draws.host import EdgeIndex, MetaPointer, pass_offset, unbought_index
from cml_dgl.train.draws.types import CMLStep, DeviceTriples


class TorchEdgeIndex:
    """:class:`~cml_dgl.train.draws.host.EdgeIndex` on a device: user-sorted CSR plus sorted keys."""

    def __init__(self, host: EdgeIndex, device: torch.device) -> None:
        self.n_users, self.n_items = host.n_users, host.n_items
        self.keys = torch.from_numpy(host.keys).to(device)
        self.indices = torch.from_numpy(host.indices).to(device)
        self.indptr = torch.from_numpy(host.indptr).to(device)
        self.degree = self.indptr[1:] - self.indptr[:-1]
        self.n_edges = int(host.keys.shape[0])

    def contains(self, users: Tensor, items: Tensor) -> Tensor:
        if self.n_edges == 0:
            return torch.zeros(users.shape, dtype=torch.bool, device=users.device)
        q = users * self.n_items + items
        pos = torch.searchsorted(self.keys, q).clamp_(max=self.n_edges - 1)
        return self.keys[pos] == q

    def random_neighbor(self, users: Tensor, gen: torch.Generator) -> Tensor:
        """One uniformly drawn neighbour per user; -1 where the user has none."""
        if self.n_edges == 0:
            return torch.full_like(users, -1)
        deg = self.degree[users]
        offs = (torch.rand(users.shape, generator=gen, device=users.device, dtype=torch.float64) * deg).long()
        at = (self.indptr[users] + offs).clamp_(max=self.n_edges - 1)
        return torch.where(deg > 0, self.indices[at], torch.full_like(users, -1))

    def sample_negatives(self, users: Tensor, gen: torch.Generator, max_rounds: int = 1000) -> Tensor:
        """Items drawn uniformly among those the user has no edge with (rejection, in bulk; one
        host sync per round to learn which draws to redo)."""
        dev = users.device
        neg = torch.randint(0, self.n_items, users.shape, generator=gen, device=dev)
        bad = torch.nonzero(self.contains(users, neg)).squeeze(1)
        for _ in range(max_rounds):
            if bad.numel() == 0:
                return neg
            neg[bad] = torch.randint(0, self.n_items, bad.shape, generator=gen, device=dev)
            bad = bad[self.contains(users[bad], neg[bad])]
        raise CmlError("negative sampling failed: some users interacted with (almost) every item")

    def draw_per_user(self, users: Tensor, n_samples: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``min(n_samples, degree)`` positives per user, with replacement, and as many negatives.
        Returns ``(users, pos, neg)`` (users repeated) and the per-user counts."""
        deg = self.degree[users]
        n = torch.clamp(deg, max=n_samples)
        total = int(n.sum())
        rep = torch.repeat_interleave(users, n, output_size=total)
        offs = (torch.rand(total, generator=gen, device=users.device, dtype=torch.float64)
                * torch.repeat_interleave(deg, n, output_size=total)).long()
        pos = self.indices[self.indptr[rep] + offs]
        return DeviceTriples(rep, pos, self.sample_negatives(rep, gen)), n


class _Segments:
    """Quantities laid out step after step; ``finish`` reads every per-step offset in one sync."""

    def __init__(self, n_steps: int) -> None:
        self.n_steps = n_steps
        self.values: list[Tensor] = []
        self.counts: list[Tensor] = []

    def add(self, values: Tensor, counts: Tensor) -> int:
        self.values.append(values)
        self.counts.append(counts.to(torch.int64))
        return len(self.values) - 1

    def add_triples(self, t: DeviceTriples, counts: Tensor) -> tuple[int, int, int]:
        return self.add(t.users, counts), self.add(t.pos, counts), self.add(t.neg, counts)

    def finish(self) -> "_SegmentViews":
        offsets = torch.zeros(len(self.counts), self.n_steps + 1, dtype=torch.int64, device=self.counts[0].device)
        offsets[:, 1:] = torch.cumsum(torch.stack(self.counts), dim=1)
        return _SegmentViews(self.values, offsets.cpu().numpy())


class _SegmentViews:
    def __init__(self, values: list[Tensor], offsets: np.ndarray) -> None:
        self.values, self.offsets = values, offsets

    def get(self, handle: int, step: int) -> Tensor:
        o = self.offsets[handle]
        return self.values[handle][int(o[step]):int(o[step + 1])]

    def triples(self, handles: tuple[int, int, int], step: int) -> DeviceTriples:
        return DeviceTriples(*(self.get(h, step) for h in handles))


class DeviceDraws:
    """Draws every epoch's samples on ``device`` from a ``torch.Generator`` seeded with ``seed``."""

    def __init__(self, index: list[EdgeIndex], target: tuple[np.ndarray, np.ndarray], cfg: dict[str, Any],
                 device: torch.device, seed: int, meta_pointer: MetaPointer | None = None,
                 with_meta: bool = False, ds: Any = None) -> None:
        self.cfg, self.device, self.with_meta = cfg, device, with_meta
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.index = [TorchEdgeIndex(ix, device) for ix in index]
        self.target_users = torch.from_numpy(np.asarray(target[0], dtype=np.int64)).to(device)
        self.target_items = torch.from_numpy(np.asarray(target[1], dtype=np.int64)).to(device)
        self.meta_pointer = meta_pointer
        self.meta_users = (torch.from_numpy(meta_pointer.users).to(device) if meta_pointer is not None
                           else None)
        self.pool = TorchEdgeIndex(unbought_index(ds), device) if ds is not None and \
            cfg["history_negatives"] > 0 else None

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Tensor]:
        return {"sampler_rng": self.gen.get_state()}

    def load_state(self, state: dict[str, Any]) -> bool:
        if "sampler_rng" not in state:
            return False
        try:
            self.gen.set_state(state["sampler_rng"])
        except RuntimeError:  # the state of another device type's generator
            return False
        return True

    def reseed(self, seed: int) -> None:
        self.gen.manual_seed(seed)

    # ------------------------------------------------------------------ helpers
    def _rand(self, n: int) -> Tensor:
        return torch.rand(n, generator=self.gen, device=self.device, dtype=torch.float64)

    def _subsets(self, sizes: np.ndarray, take: np.ndarray) -> Tensor:
        """Positions of a uniform ``take[j]``-subset (in random order) of each segment j of
        ``0..sum(sizes)-1`` (segment j holds ``sizes[j]`` positions), concatenated step after step."""
        total, dev = int(sizes.sum()), self.device
        seg = torch.repeat_interleave(torch.arange(len(sizes), device=dev),
                                      torch.from_numpy(sizes).to(dev), output_size=total)
        order = torch.argsort(seg.to(torch.float64) + self._rand(total))  # segments stay in order
        starts = np.cumsum(sizes) - sizes
        return order[torch.from_numpy(np.repeat(starts, take) + _ranks(take)).to(dev)]

    # ------------------------------------------------------------------ CML
    def cml_steps(self) -> list[CMLStep]:
        cfg, dev = self.cfg, self.device
        K = len(self.index)
        n, B = int(self.target_users.shape[0]), cfg["batch_size"]
        n_steps = -(-n // B)
        if n_steps == 0:
            return []
        sizes = np.minimum(B, n - np.arange(n_steps, dtype=np.int64) * B)
        order = torch.randperm(n, generator=self.gen, device=dev)
        users, target_items = self.target_users[order], self.target_items[order]
        step_of_row = torch.arange(n, device=dev) // B
        segs = _Segments(n_steps)
        triples = []
        edge_passes = cfg["aux_draws"] == "edges"
        for k in range(K):
            if edge_passes and k < K - 1:
                continue
            pos = target_items if k == K - 1 else self.index[k].random_neighbor(users, self.gen)
            neg = self.index[k].sample_negatives(users, self.gen)
            if k == K - 1 and self.pool is not None:
                pick = self._rand(n) < cfg["history_negatives"]
                cand = self.pool.random_neighbor(users, self.gen)
                neg = torch.where(pick & (cand >= 0), cand, neg)
            if k == K - 1:
                t, counts = DeviceTriples(users, pos, neg), torch.from_numpy(sizes).to(dev)
            else:
                keep = torch.nonzero(pos >= 0).squeeze(1)
                t = DeviceTriples(users[keep], pos[keep], neg[keep])
                counts = torch.bincount(step_of_row[keep], minlength=n_steps)
            triples.append(segs.add_triples(t, counts))
        if edge_passes:  # after the target's draws, as on the host; behavior k goes before the target
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            for k in range(K - 1):
                ix = self.index[k]
                counts = torch.from_numpy(np.diff(pass_offset(bounds, n, ix.n_edges))).to(dev)
                triples.insert(k, segs.add_triples(self._edge_pass(ix), counts))
        ratio = cfg["cl_sample_ratio"]
        take = _contrast_sizes(sizes, ratio)
        take_dev = torch.from_numpy(take).to(dev)
        s1 = segs.add(users[self._subsets(sizes, take)], take_dev)
        s3 = segs.add(users[self._subsets(sizes, take)], take_dev)
        meta_triples: list[tuple[int, int, int]] = []
        s2 = segs.add(users[:0], torch.zeros(n_steps, dtype=torch.int64, device=dev))
        if self.with_meta:
            meta_triples, s2 = self._meta(segs, n_steps)
        views = segs.finish()
        return [CMLStep([views.triples(h, j) for h in triples], views.get(s1, j), views.get(s3, j),
                        [views.triples(h, j) for h in meta_triples], views.get(s2, j))
                for j in range(n_steps)]

    def _meta(self, segs: _Segments, n_steps: int) -> tuple[list[tuple[int, int, int]], int]:
        cfg, dev, p = self.cfg, self.device, self.meta_pointer
        K = len(self.index)
        n_meta = int(p.users.shape[0])
        L = min(p.batch, n_meta)
        at = (p.pos + p.batch * torch.arange(n_steps, device=dev)[:, None]
              + torch.arange(L, device=dev)[None, :]) % n_meta
        p.pos = int((p.pos + p.batch * n_steps) % n_meta)
        mu = self.meta_users[at.reshape(-1)]
        handles = []
        for k in range(K):
            src = self.index[k if cfg["meta_bpr_per_behavior"] else K - 1]
            t, per_user = src.draw_per_user(mu, cfg["meta_samples"], self.gen)
            handles.append(segs.add_triples(t, per_user.view(n_steps, L).sum(1)))
        if cfg["meta_cl_all_users"]:
            s2 = segs.add(mu, torch.full((n_steps,), L, dtype=torch.int64, device=dev))
        else:
            take = int(_contrast_sizes(np.array([L]), cfg["cl_sample_ratio"])[0])
            picked = self._subsets(np.full(n_steps, L, dtype=np.int64), np.full(n_steps, take, dtype=np.int64))
            s2 = segs.add(mu[picked], torch.full((n_steps,), take, dtype=torch.int64, device=dev))
        return handles, s2

    # ------------------------------------------------------------------ MF / LightGCN
    def pair_triples(self) -> DeviceTriples:
        """Every edge of ``index[0]`` once, shuffled, with one uniform negative each."""
        return self._edge_pass(self.index[0])

    def _edge_pass(self, ix: TorchEdgeIndex) -> DeviceTriples:
        u = torch.repeat_interleave(torch.arange(ix.n_users, device=self.device), ix.degree,
                                    output_size=ix.n_edges)
        order = torch.randperm(ix.n_edges, generator=self.gen, device=self.device)
        u, i = u[order], ix.indices[order]
        return DeviceTriples(u, i, ix.sample_negatives(u, self.gen))


def _contrast_sizes(sizes: np.ndarray, ratio: float) -> np.ndarray:
    """floor(ratio * n) per batch, 0 where that is below 2 (the host rule of ``contrast_sample``)."""
    take = np.floor(sizes * ratio).astype(np.int64)
    take[take < 2] = 0
    return take


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each c of ``counts``, concatenated."""
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
