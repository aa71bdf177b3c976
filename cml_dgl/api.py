"""The Python API: what the ``cml`` commands do, as a few calls for notebooks and scripts.

>>> import cml_dgl
>>> ds = cml_dgl.load_dataset("datasets/retailrocket")
>>> run = cml_dgl.fit(ds, "runs/rr", model="lightgcn-merged", overrides={"epochs": 20})
>>> cml_dgl.evaluate(run, protocol="full")          # [{"protocol": "full", "metrics": {...}}]
>>> cml_dgl.recommend(run, run.ds.user_ids[:1000], k=10)   # a DataFrame: user, rank, item, score
>>> cml_dgl.export_embeddings(run, "runs/rr/embeddings")

Every call takes and returns plain objects (a :class:`~cml_dgl.data.dataset.Dataset`, a
:class:`~cml_dgl.runs.LoadedRun`, dicts, a pandas DataFrame); the run directory is the same one
``cml train`` writes, so ``cml evaluate`` and the rest read it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from cml_dgl.data.dataset import Dataset, load_dataset
from cml_dgl.errors import CmlError
from cml_dgl.export import export_embeddings
from cml_dgl.runs import LoadedRun, load_run

__all__ = ["load_dataset", "fit", "open_run", "evaluate", "recommend", "export_embeddings"]


def _overrides(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        import yaml

        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in overrides.items()]
    return list(overrides)


def fit(dataset: Dataset | str | Path, out: str | Path, *, model: str | None = None,
          presets: Sequence[str] = (), config: str | Path | None = None,
          overrides: Mapping[str, Any] | Iterable[str] | None = None, overwrite: bool = False,
          quiet: bool = True) -> LoadedRun:
    """Train into run directory ``out`` (as ``cml train``) and open its best checkpoint.

    The config layers are those of the CLI: defaults < model defaults < ``presets`` < the YAML
    file ``config`` < ``overrides`` (a mapping of keys to values, or ``"key=value"`` strings).
    """
    from cml_dgl.train import config as config_mod
    from cml_dgl.train.trainer import Trainer

    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    sets = _overrides(overrides) + ([f"model={model}"] if model is not None else [])
    cfg = config_mod.resolve(presets, config, sets)
    trainer = Trainer(ds, cfg, out, quiet=quiet)
    trainer.prepare_run_dir(overwrite=overwrite)
    trainer.fit()
    return load_run(out, "best", dataset=ds)


def open_run(run_dir: str | Path, checkpoint: str = "best", dataset: Dataset | str | Path | None = None,
             device: str = "cpu") -> LoadedRun:
    """Open a trained run directory at ``checkpoint`` (best, last, or a path)."""
    return load_run(run_dir, checkpoint, dataset=dataset, device=device)


def evaluate(run: LoadedRun, *, split: str = "test", protocol: str = "sampled", ks: Sequence[int] = (10,),
             tie_rule: str = "expected", mask: str = "target") -> list[dict[str, Any]]:
    """Evaluate as ``cml evaluate`` does: one result dict per protocol (``both``: sampled, full)."""
    from cml_dgl.eval.evaluate import evaluate as evaluate_scorer

    return evaluate_scorer(run.ds, run.scorer(), split=split, protocol=protocol, ks=ks,
                           tie_rule=tie_rule, mask=mask, seed=run.cfg["seed"])


def user_indices(ds: Dataset, raw_users: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Row indices of raw user ids; an unknown id is a :class:`CmlError` naming it."""
    raw = np.asarray(raw_users)
    ids = ds.user_ids
    if ids.dtype.kind in "iu" and raw.dtype.kind not in "iu":
        try:
            raw = raw.astype(np.int64)
        except (TypeError, ValueError):
            raise CmlError("this dataset's user ids are integers; got non-integer ids") from None
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], raw)
    pos = np.minimum(pos, len(ids) - 1)
    found = ids[order][pos] == raw
    if not found.all():
        bad = raw[~found][0].item()  # a Python value: numpy 2 would print np.int64(7)
        raise CmlError(f"unknown user {bad!r}: not in the dataset's user id map ({len(ids)} users)")
    return order[pos].astype(np.int64)


def recommend(run: LoadedRun, users: Sequence[Any] | np.ndarray, k: int = 10, *,
              include_purchased: bool = False):
    """Top-``k`` items of many raw user ids in one encoder pass: a DataFrame with columns
    ``user, rank, item, score`` (raw ids; training purchases excluded unless ``include_purchased``)."""
    import pandas as pd

    ds = run.ds
    rows = user_indices(ds, users)
    exclude = None if include_purchased else ds.csr(ds.n_behaviors - 1)
    run.model.eval()
    items, scores = run.model.recommend(rows, k, exclude=exclude)
    items, scores = items.numpy(), scores.numpy()
    keep = items >= 0
    user_rows = np.repeat(rows, keep.sum(1))
    ranks = np.tile(np.arange(1, items.shape[1] + 1), (len(rows), 1))[keep]
    return pd.DataFrame({"user": ds.user_ids[user_rows], "rank": ranks,
                         "item": ds.item_ids[items[keep]], "score": scores[keep].astype(np.float64)})
