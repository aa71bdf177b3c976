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
from cml_dgl.train.checkpoint import load_checkpoint
from cml_dgl.train.config import resolve
from cml_dgl.train.model_factory import build_model


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: dict[str, Any]
    ds: Dataset
    model: nn.Module
    meta: nn.Module | None
    checkpoint: Path
    info: dict[str, Any]

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        return self.model.embeddings()


NAMED_CHECKPOINTS = ("best", "last", "prev")


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """The file ``--checkpoint`` names: ``best``, ``last`` or ``prev`` (``RUN_DIR/checkpoints/<name>.pt``),
    a checkpoint file, or another file of ``RUN_DIR/checkpoints`` by its name with or without ``.pt``."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if checkpoint in NAMED_CHECKPOINTS:
        path = ckpt_dir / f"{checkpoint}.pt"
        if not path.is_file():
            raise CmlError(f"{path}: checkpoint not found (the run has no {checkpoint!r} checkpoint yet)")
        return path
    candidates = [Path(checkpoint)]
    if checkpoint and "/" not in checkpoint and checkpoint not in (".", ".."):
        candidates += [ckpt_dir / checkpoint, ckpt_dir / f"{checkpoint}.pt"]
    for path in candidates:
        try:
            if path.is_file():
                return path
        except (OSError, ValueError):
            continue
    try:
        have = sorted(p.stem for p in ckpt_dir.glob("*.pt"))
    except OSError:
        have = []
    raise CmlError(f"--checkpoint {checkpoint}: checkpoint not found, neither a file nor one of the run's "
                   f"checkpoints ({', '.join(have) or 'none yet'} in {ckpt_dir})")


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
    try:
        saved = yaml.safe_load(cfg_path.read_text())
        recorded = json.loads((rd / "run.json").read_text()).get("dataset")
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as e:
        raise CmlError(f"{rd}: unreadable run files ({e})") from None
    cfg = resolve(base=saved, overrides=[f"device={device}", "backend=torch" if device != "cpu" else "backend=auto"])
    ds_path = dataset or recorded
    if not ds_path:
        raise CmlError(f"{rd}/run.json records no dataset; pass --dataset")
    if dataset is None and not isinstance(recorded, str):
        raise CmlError(f"{rd}/run.json: field 'dataset' must be a path, got {recorded!r:.80}; pass --dataset")
    if dataset is None and not Path(recorded).exists():
        raise CmlError(f"{rd}/run.json: the run's dataset {recorded} is gone (moved or deleted); pass "
                       "--dataset PATH, a dataset folder with the same id maps")
    ds = ds_path if isinstance(ds_path, Dataset) else load_dataset(ds_path)
    state, info = load_checkpoint(ckpt)
    if info.get("id_map_checksum") != ds.id_map_checksum():
        raise CmlError(f"{ckpt}: trained on another dataset than {ds.path or ds_path} (id-map checksum differs)")
    dev = torch.device(device)
    model, meta = build_model(ds, cfg, dev)
    model.load_state_dict(state["model"])
    if meta is not None and "meta" in state:
        meta.load_state_dict(state["meta"])
    model.eval()
    if meta is not None:
        meta.eval()
    return LoadedRun(rd, cfg, ds, model, meta, ckpt, info)
