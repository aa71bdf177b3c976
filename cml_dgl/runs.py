"""Open a trained run directory: its config, dataset and model at a chosen checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from cml_dgl.data.dataset import Dataset, load_dataset
from cml_dgl.errors import CmlError
from cml_dgl.models import registry
from cml_dgl.models.base import Recommender, Scorer
from cml_dgl.train.checkpoint import load_checkpoint
from cml_dgl.train.config import resolve


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: dict[str, Any]
    ds: Dataset
    model: Recommender
    meta: nn.Module | None
    checkpoint: Path
    info: dict[str, Any]

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's embeddings (a model scored row by row may refuse them: see
        :class:`~cml_dgl.models.base.ScoredRecommender`)."""
        self.model.eval()
        return self.model.embeddings()

    @torch.no_grad()
    def scorer(self) -> Scorer:
        """What evaluation and recommendation rank with: the model's scores, in eval mode."""
        self.model.eval()
        return self.model.scorer()


def _loading_backend(trained_with: str, device: str) -> str:
    """The backend that scores a run exactly as trained: its own on the CPU (DGL only where it
    imports, else torch, the same sums in another order), torch on any other device."""
    if device != "cpu":
        return "torch"
    if trained_with == "dgl":
        from cml_dgl.graph.backends import _dgl_unavailable_reason

        return "dgl" if _dgl_unavailable_reason() is None else "torch"
    return trained_with


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint in ("best", "last"):
        return run_dir / "checkpoints" / f"{checkpoint}.pt"
    return Path(checkpoint)


def load_run(run_dir: str | Path, checkpoint: str = "best", dataset: str | Path | Dataset | None = None,
             device: str = "cpu") -> LoadedRun:
    """Rebuild the run's model on ``device`` and load its weights (weights-only, checksummed).

    The dataset is the one recorded in ``run.json`` unless ``dataset`` (a path, or a dataset
    already loaded) is given; a checkpoint whose id-map checksum differs from the dataset's is refused.
    """
    rd = Path(run_dir)
    cfg_path = rd / "config.yaml"
    if not cfg_path.is_file():
        raise CmlError(f"{rd}: not a run directory (no config.yaml; train one with `cml train`)")
    ckpt = checkpoint_path(rd, checkpoint)
    if not ckpt.is_file():
        raise CmlError(f"{ckpt}: checkpoint not found (the run has no {checkpoint!r} checkpoint yet)")
    try:
        saved = yaml.safe_load(cfg_path.read_text())
        recorded = json.loads((rd / "run.json").read_text()).get("dataset")
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as e:
        raise CmlError(f"{rd}: unreadable run files ({e})") from None
    cfg = resolve(base=saved, overrides=[f"device={device}"])
    cfg["backend"] = _loading_backend(cfg["backend"], device)
    ds_path = dataset or recorded
    if not ds_path:
        raise CmlError(f"{rd}/run.json records no dataset; pass --dataset")
    ds = ds_path if isinstance(ds_path, Dataset) else load_dataset(ds_path)
    state, info = load_checkpoint(ckpt)
    if info.get("id_map_checksum") != ds.id_map_checksum():
        raise CmlError(f"{ckpt}: trained on another dataset than {ds.path or ds_path} (id-map checksum differs)")
    dev = torch.device(device)
    model = registry.build(ds, cfg, dev)
    meta = getattr(model, "meta", None)
    model.load_state_dict(state["model"])
    if meta is not None and "meta" in state:
        meta.load_state_dict(state["meta"])
    model.eval()
    if meta is not None:
        meta.eval()
    return LoadedRun(rd, cfg, ds, model, meta, ckpt, info)
