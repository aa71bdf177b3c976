"""An epoch's samples as device tensors, drawn on the host (:class:`HostDraws`) or on the device
(:class:`cml_dgl.train.device_sampler.DeviceDraws`); :func:`make_draws` picks one (config ``sampler``).

The host samplers (:mod:`cml_dgl.train.sampler`) draw with numpy. Copying each step's arrays as
the step runs would cost one blocking transfer per array and step on a GPU; instead the whole epoch
is drawn first (the draws do not depend on the model, so their order and values are those of a
step-by-step loop), every array is registered with an :class:`IndexPack` and the pack moves once.
Steps then read device views (slices of one flat tensor): no per-step host round trip. An epoch's
indices take about (3K + 2) x 8 bytes per target interaction, plus the meta users' triples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from cml_dgl.data.dataset import Dataset
from cml_dgl.errors import CmlError
from cml_dgl.train import sampler as smp
from cml_dgl.train.sampler import Triples

SAMPLERS = ("auto", "host", "device")


@dataclass
class DeviceTriples:
    """BPR triples of one behavior as int64 tensors on the training device."""

    users: Tensor
    pos: Tensor
    neg: Tensor

    def __len__(self) -> int:
        return int(self.users.shape[0])


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


@dataclass
class CMLStep:
    """The draws of one CML step on the device: the batch's BPR triples per behavior, the contrast
    samples of phases 1 and 3, and the meta users' triples per behavior and contrast sample
    (phase 2; empty without a meta network)."""

    triples: list[DeviceTriples]
    cl_clone: Tensor
    cl_main: Tensor
    meta_triples: list[DeviceTriples]
    cl_meta: Tensor


class Draws(Protocol):
    """Where an epoch's samples come from; the trainer only sees device tensors."""

    def cml_steps(self) -> list[CMLStep]: ...

    def pair_triples(self) -> DeviceTriples: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> bool:
        """Restore the stream from a checkpoint's entries; False where they are not this
        sampler's (another sampler, or a generator of another device type)."""

    def reseed(self, seed: int) -> None: ...


class HostDraws:
    """numpy draws on the host (the reference stream: same seed, same samples on every machine),
    one host-to-device copy per epoch."""

    def __init__(self, ds: Dataset, index: list[smp.EdgeIndex], cfg: dict[str, Any], device: torch.device,
                 seed: int, meta_pointer: smp.MetaPointer | None = None, with_meta: bool = False) -> None:
        self.ds, self.index, self.cfg, self.device = ds, index, cfg, device
        self.meta_pointer, self.with_meta = meta_pointer, with_meta
        self.rng = np.random.default_rng(seed)

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
        samples = smp.cml_epoch_samples(self.ds, self.index, self.rng)
        B, ratio = cfg["batch_size"], cfg["cl_sample_ratio"]
        meta_k = [k if cfg["meta_bpr_per_behavior"] else K - 1 for k in range(K)]
        pack, plan = IndexPack(), []
        for start in range(0, len(samples), B):
            batch_users = samples.users[start:start + B]
            triples = [pack.add_triples(t) for t in samples.batch(start, start + B)]
            s1 = pack.add(smp.contrast_sample(batch_users, ratio, self.rng))
            s3 = pack.add(smp.contrast_sample(batch_users, ratio, self.rng))
            meta_triples, s2 = [], pack.add(batch_users[:0])
            if self.with_meta:
                meta_users = self.meta_pointer.next()
                meta_triples = [pack.add_triples(smp.meta_triples(meta_users, self.index[k], cfg["meta_samples"],
                                                                  self.rng)) for k in meta_k]
                s2 = pack.add(meta_users if cfg["meta_cl_all_users"] else
                              smp.contrast_sample(meta_users, ratio, self.rng))
            plan.append((triples, s1, s3, meta_triples, s2))
        dev = pack.to(self.device)
        return [CMLStep([dev.triples(h) for h in tr], dev.get(s1), dev.get(s3), [dev.triples(h) for h in mt],
                        dev.get(s2)) for tr, s1, s3, mt, s2 in plan]

    def pair_triples(self) -> DeviceTriples:
        pack = IndexPack()
        handles = pack.add_triples(smp.pair_epoch_samples(self.index[0], self.rng))
        return pack.to(self.device).triples(handles)


def resolve_sampler(name: str, device: torch.device) -> str:
    """``auto``: on the device where it is a GPU, else the host (numpy) stream."""
    if name not in SAMPLERS:
        raise CmlError(f"unknown sampler {name!r}; expected one of {list(SAMPLERS)}")
    if name == "auto":
        return "device" if device.type == "cuda" else "host"
    return name


def make_draws(name: str, ds: Dataset, index: list[smp.EdgeIndex], cfg: dict[str, Any], device: torch.device,
               seed: int, meta_pointer: smp.MetaPointer | None = None, with_meta: bool = False) -> Draws:
    """The draws of config ``sampler`` (auto | host | device). ``index`` holds one edge index per
    behavior for CML, or the single training-edge index of a BPR baseline."""
    if resolve_sampler(name, device) == "host":
        return HostDraws(ds, index, cfg, device, seed, meta_pointer, with_meta)
    from cml_dgl.train.device_sampler import DeviceDraws

    target = ds.edges(ds.n_behaviors - 1)
    return DeviceDraws(index, target, cfg, device, seed, meta_pointer, with_meta)
