"""Pick the draws of config ``sampler``: ``host`` (numpy) or ``device`` (torch)."""

from __future__ import annotations

from typing import Any

import torch

from cml_dgl.data.dataset import Dataset
from cml_dgl.errors import CmlError
from cml_dgl.train.draws.host import EdgeIndex, HostDraws, MetaPointer
from cml_dgl.train.draws.types import Draws

SAMPLERS = ("auto", "host", "device")


def resolve_sampler(name: str, device: torch.device) -> str:
    """``auto``: on the device where it is a GPU, else the host (numpy) stream."""
    if name not in SAMPLERS:
        raise CmlError(f"unknown sampler {name!r}; expected one of {list(SAMPLERS)}")
    if name == "auto":
        return "device" if device.type == "cuda" else "host"
    return name


def make_draws(name: str, ds: Dataset, index: list[EdgeIndex], cfg: dict[str, Any], device: torch.device,
               seed: int, meta_pointer: MetaPointer | None = None, with_meta: bool = False) -> Draws:
    """The draws of config ``sampler`` (auto | host | device). ``index`` holds one edge index per
    behavior for CML, or the single training-edge index of a BPR baseline."""
    if resolve_sampler(name, device) == "host":
        return HostDraws(ds, index, cfg, device, seed, meta_pointer, with_meta)
    from cml_dgl.train.draws.device import DeviceDraws

    target = ds.edges(ds.n_behaviors - 1)
    return DeviceDraws(index, target, cfg, device, seed, meta_pointer, with_meta, ds=ds)
