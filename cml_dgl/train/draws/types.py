"""The records an epoch's draws hand the trainer, and the :class:`Draws` interface both samplers
implement (host: :mod:`cml_dgl.train.draws.host`, device: :mod:`cml_dgl.train.draws.device`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor


@dataclass
class DeviceTriples:
    """BPR triples of one behavior as int64 tensors on the training device."""

    users: Tensor
    pos: Tensor
    neg: Tensor

    def __len__(self) -> int:
        return int(self.users.shape[0])


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
