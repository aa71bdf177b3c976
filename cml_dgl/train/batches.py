"""One epoch's sample index arrays, moved to the training device in a single host-to-device copy.

The samplers (:mod:`cml_dgl.train.sampler`) draw with numpy on the host. Copying each step's
arrays as the step runs costs one blocking transfer per array and step on a GPU; instead the
trainer draws the whole epoch first (the draws do not depend on the model, so their order and
values are unchanged), registers every array with an :class:`IndexPack` and moves the pack once.
Steps then read device views (slices of one flat tensor): no per-step host round trip. An epoch's
indices take about (3K + 2) x 8 bytes per target interaction, plus the meta users' triples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cml_dgl.train.sampler import Triples


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
