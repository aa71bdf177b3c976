"""Open a trained run directory: its config, dataset and model at a chosen checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cml_dgl.data.dataset import Dataset, load_dataset
from cml_dgl.errors import CmlError
from cml_dgl.models import registry
from cml_dgl.models.base import Recommender, Scorer
from cml_dgl.train.checkpoint import load_checkpoint
from cml_dgl.train.config import differences, quote, read_config_file, resolve
from cml_dgl.train.devices import resolve_device
from cml_dgl.train.run_dir import RunDir


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


NAMED_CHECKPOINTS = ("best", "last", "prev")


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


# keys a checkpoint may hold other values of than config.yaml: a resume may change the first three,
# and opening a run chooses the device and the backend
_RUNTIME_KEYS = ("epochs", "patience", "device", "backend")


def load_run(run_dir: str | Path, checkpoint: str = "best", dataset: str | Path | Dataset | None = None,
             device: str = "cpu", allow_changed_dataset: bool = False) -> LoadedRun:
    """Rebuild the run's model on ``device`` and load its weights (weights-only, checksummed).

    The dataset is the one recorded in ``run.json`` unless ``dataset`` (a path, or a dataset
    already loaded) is given; a checkpoint whose id-map checksum differs from the dataset's is
    refused, and so is a dataset whose files changed since training (rebuilt with another seed or
    ``--no-valid``) unless ``allow_changed_dataset``. A ``config.yaml`` that no longer matches the
    checkpoint's configuration (edited) is refused too.
    """
    rd = Path(run_dir)
    cfg_path = rd / "config.yaml"
    if not cfg_path.is_file():
        raise CmlError(f"{rd}: not a run directory (no config.yaml; train one with `cml train`)")
    ckpt = checkpoint_path(rd, checkpoint)
    if not ckpt.is_file():
        raise CmlError(f"{ckpt}: checkpoint not found (the run has no {checkpoint!r} checkpoint yet)")
    saved = read_config_file(cfg_path)
    run_dir_files = RunDir(rd)
    recorded = run_dir_files.read_info().get("dataset")
    dev = resolve_device(device)
    cfg = resolve(base=saved, base_where=str(cfg_path), overrides=[f"device={device}"])
    cfg["backend"] = _loading_backend(cfg["backend"], dev.type)
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
    run_dir_files.check_dataset(ds, allow_changed_dataset)
    changed = differences(cfg, info.get("config", cfg), ignore=_RUNTIME_KEYS)
    if changed:
        raise CmlError(f"{cfg_path}: differs from the configuration {ckpt.name} was trained with "
                       f"({'; '.join(changed[:3])}); was it edited? Restore it")
    model = registry.build(ds, cfg, dev)
    meta = getattr(model, "meta", None)
    try:
        model.load_state_dict(state["model"])
        if meta is not None and "meta" in state:
            meta.load_state_dict(state["meta"])
    except (KeyError, RuntimeError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise CmlError(f"{ckpt}: its weights do not fit the model of {cfg_path} ({quote(first)})") from None
    model.eval()
    if meta is not None:
        meta.eval()
    return LoadedRun(rd, cfg, ds, model, meta, ckpt, info)
