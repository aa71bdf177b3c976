"""Build the model (CML or a baseline) and its meta network from a resolved config."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cml_dgl.data.dataset import Dataset
from cml_dgl.errors import CmlError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CmlError("--device cuda: no CUDA device is available to torch here")
    return torch.device(name)


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
