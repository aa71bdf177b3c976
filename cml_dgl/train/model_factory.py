"""Build the model (CML or a baseline) and its meta network from a resolved config."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from cml_dgl.data.dataset import Dataset
from cml_dgl.errors import CmlError


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


def build_model(ds: Dataset, cfg: dict[str, Any], device: torch.device) -> tuple[nn.Module, nn.Module | None]:
    """Return ``(model, meta_net)``; ``meta_net`` is None for baselines and the no-meta variant."""
    if cfg["model"] != "cml":
        from cml_dgl.models.baselines import make_baseline

        model = make_baseline(cfg["model"], ds, dim=cfg["dim"], n_layers=cfg["n_layers"],
                              backend=cfg["backend"], device=device)
        return model.to(device), None
    from cml_dgl.graph.backends import propagator_for_dataset
    from cml_dgl.models.cml import CML
    from cml_dgl.models.meta import MetaWeightNet

    prop = propagator_for_dataset(ds, backend=cfg["backend"], norm=cfg["norm"], device=device)
    model = CML(ds.n_users, ds.n_items, ds.n_behaviors, prop, dim=cfg["dim"],
                n_layers=cfg["n_layers"], activation=cfg["activation"]).to(device)
    meta = None
    if cfg["variant"] != "no-meta":
        meta = MetaWeightNet(dim=cfg["dim"], dropout=cfg["meta_dropout"], gamma=cfg["meta_gamma"],
                             halve_bpr=cfg["meta_halve_bpr"], mke=cfg["variant"] != "no-mke",
                             n_behaviors=ds.n_behaviors,
                             detach_loss=cfg["meta_detach_loss"]).to(device)
    return model, meta
