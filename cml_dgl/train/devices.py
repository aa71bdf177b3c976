"""The run's torch device from config ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import os

import torch

from cml_dgl.errors import CmlError

#: the device names of the CLI's help; ``cuda:N`` is accepted too (see config.check_device_name)
DEVICES = ("auto", "cpu", "cuda")


def _visible() -> str:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "unset" if value is None else repr(value)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; a GPU that
    torch does not see is a CmlError naming CUDA_VISIBLE_DEVICES, which decides what it sees."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CmlError(f"--device {name}: torch sees no GPU here (CUDA_VISIBLE_DEVICES {_visible()}, "
                           f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                           "use --device cpu")
        index = name.partition(":")[2]
        n = torch.cuda.device_count()
        if index and int(index) >= n:
            raise CmlError(f"--device {name}: torch sees {n} GPU{'s' if n != 1 else ''} here "
                           f"(cuda:0{f' .. cuda:{n - 1}' if n > 1 else ''}; CUDA_VISIBLE_DEVICES {_visible()})")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise CmlError(f"--device {name}: not a device torch knows ({e})") from None
