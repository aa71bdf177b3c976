"""The run's torch device from config ``device``."""

from __future__ import annotations

import torch

from cml_dgl.errors import CmlError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CmlError("--device cuda: no CUDA device is available to torch here")
    return torch.device(name)
