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
from cml_dgl.export import export_embeddings
from cml_dgl.runs import LoadedRun, load_run

__all__ = ["load_dataset", "fit", "refit", "tune", "open_run", "evaluate", "recommend", "export_embeddings"]


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


def refit(run_dir: str | Path, out: str | Path, *, dataset: Dataset | str | Path | None = None,
          overwrite: bool = False, quiet: bool = True) -> LoadedRun:
    """The honest refit of a finished honest run (as ``cml refit``): retrain on training +
    validation purchases for its selected number of epochs, read the test split once, and open the
    new run (``out``; protocol ``honest-refit``). See :mod:`cml_dgl.train.refit`."""
    from cml_dgl.train.refit import refit as refit_run

    refit_run(run_dir, out, dataset=dataset, overwrite=overwrite, quiet=quiet)
    return load_run(out, "best")


def tune(dataset: Dataset | str | Path, out: str | Path, *, model: str, trials: int, presets: Sequence[str] = (),
         config: str | Path | None = None, overrides: Mapping[str, Any] | Iterable[str] | None = None,
         seed: int | None = None, startup_trials: int = 5, warmup_epochs: int = 5, pruner: Any = None,
         quiet: bool = True) -> dict[str, Any]:
    """Search ``model``'s hyperparameters on the validation split (as ``cml tune``; the test split
    is never read) in the study folder ``out``, up to ``trials`` trials in all; returns the study's
    summary (``best_config``: ``out/best.yaml``, for :func:`fit`'s ``config``). Needs optuna
    (``pip install 'cml-dgl[tune]'``). See :mod:`cml_dgl.tuning`."""
    from cml_dgl.tuning import tune as tune_study

    return tune_study(dataset, out, model=model, trials=trials, presets=presets, config=config,
                      overrides=_overrides(overrides), seed=seed, startup_trials=startup_trials,
                      warmup_epochs=warmup_epochs, pruner=pruner, quiet=quiet)


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


def recommend(run: LoadedRun, users: Sequence[Any] | np.ndarray, k: int = 10, *,
              include_purchased: bool = False):
    """Top-``k`` items of many raw user ids in one encoder pass: a DataFrame with columns
    ``user, rank, item, score`` (raw ids; training purchases excluded unless ``include_purchased``;
    as ``cml recommend``)."""
    import pandas as pd

    from cml_dgl.export import recommend_users, user_indices

    rows = user_indices(run, [str(u) for u in np.asarray(users).tolist()])
    table = recommend_users(run, rows, k=k, include_purchased=include_purchased)
    return pd.DataFrame({c: table[c] for c in ("user", "rank", "item", "score")})
