"""The honest refit: retrain a finished honest run on training + validation purchases for exactly
the number of epochs it selected, then read the test split once.

An honest run (``monitor: valid``) chooses its epoch (and, through :mod:`cml_dgl.tuning`, its
hyperparameters) on each user's validation purchase, which therefore never trains the model: the
newest purchase before the test item is lost to it. The refit gives it back without reopening the
selection:

1. :func:`refit_dataset`: the source dataset with every validation pair (u, v) added to the
   training purchases, no validation split, and the same test pairs and stored test candidates;
2. the source run's config with the same seed, ``epochs`` = its best epoch and ``monitor: none``
   (nothing is selected: there is nothing left to select on);
3. the test split evaluated once, after the last epoch (:mod:`cml_dgl.train.trainer`, protocol
   ``honest-refit``).

The validation pair's auxiliary edges stay as preprocessing left them, which is the policy that
``meta.json`` records (``options.stats.held_out_auxiliary``) and that the test pair got too:
``drop`` removed them (a CML split), ``keep`` kept them, ``before`` kept those earlier than the
purchase. The added purchase thus looks to the model as the test purchase does; the number of
validation pairs with an auxiliary edge is recorded (``valid_pairs_in_auxiliary``).

The stored test candidates stay valid: :mod:`cml_dgl.data.split` draws them among the items the
user never purchased, the validation item included, so none of them becomes a training purchase of
its user. :func:`refit_dataset` checks this and refuses a dataset where one does.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cml_dgl.data.dataset import Dataset, load_dataset, write_dataset
from cml_dgl.errors import CmlError
from cml_dgl.eval.evaluate import seen_in_auxiliary

REFIT_DATASET = "dataset"


def refit_dataset(ds: Dataset, source_run: str | os.PathLike | None = None) -> Dataset:
    """``ds`` with its validation purchases moved into training (module docstring); ``ds`` is not
    changed. The added edges take the user's latest training-purchase time (the dataset does not
    store the validation purchase's own time; training never reads times)."""
    where = ds.path or "dataset"
    if len(ds.valid) == 0:
        raise CmlError(f"{where}: has no validation split, so there is nothing to add to training "
                       "(refit follows an honest run, which needs one)")
    target = ds.n_behaviors - 1
    valid = ds.valid.astype(np.int64)
    valid_item = np.full(ds.n_users, -1, dtype=np.int64)
    valid_item[valid[:, 0]] = valid[:, 1]
    bad = np.flatnonzero((ds.test_negatives == valid_item[ds.test[:, 0]][:, None]).any(axis=1))
    if bad.size:
        u = int(ds.test[bad[0], 0])
        raise CmlError(f"{where}: test_negatives row {int(bad[0])} holds user {u}'s validation item "
                       f"{int(valid_item[u])}, a training purchase after the refit ({bad.size} row(s)); "
                       "the sampled protocol would rank it as a negative (re-run cml preprocess)")
    bu, bi = ds.edges(target)
    already = np.isin(valid[:, 0] * ds.n_items + valid[:, 1], bu * ds.n_items + bi)
    add = valid[~already]
    on_target = ds.train_behavior == target
    latest = np.zeros(ds.n_users, dtype=np.int64)
    np.maximum.at(latest, ds.train_user[on_target].astype(np.int64), ds.train_time[on_target].astype(np.int64))
    stats = ds.options.get("stats") or {}
    options = copy.deepcopy(ds.options)
    options["refit"] = {
        "source_run": str(Path(source_run).resolve()) if source_run is not None else None,
        "source_dataset": str(Path(ds.path).resolve()) if ds.path else None,
        "added_purchases": int(len(add)),
        "valid_pairs_already_purchases": int(already.sum()),
        "held_out_auxiliary": stats.get("held_out_auxiliary", ds.options.get("held_out_auxiliary")),
        "valid_pairs_in_auxiliary": int(seen_in_auxiliary(ds, ds.valid).sum()),
    }
    n_neg = ds.test_negatives.shape[1]
    return Dataset(
        behaviors=list(ds.behaviors), n_users=ds.n_users, n_items=ds.n_items,
        train_user=np.concatenate([ds.train_user, add[:, 0].astype(ds.train_user.dtype)]),
        train_item=np.concatenate([ds.train_item, add[:, 1].astype(ds.train_item.dtype)]),
        train_behavior=np.concatenate([ds.train_behavior, np.full(len(add), target, ds.train_behavior.dtype)]),
        train_time=np.concatenate([ds.train_time, latest[add[:, 0]].astype(ds.train_time.dtype)]),
        valid=np.zeros((0, 2), dtype=np.int32), test=ds.test.copy(),
        valid_negatives=np.zeros((0, n_neg), dtype=np.int32), test_negatives=ds.test_negatives.copy(),
        user_ids=ds.user_ids, item_ids=ds.item_ids, meta_users=ds.meta_users, source=ds.source,
        options=options, seed=ds.seed,
    )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CmlError(f"{path}: missing; {what}") from None
    except (OSError, ValueError) as e:
        raise CmlError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise CmlError(f"{path}: expected a JSON object")
    return data


def source_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(config, run.json, summary.json)`` of a finished honest run; CmlError naming what is wrong."""
    rd = Path(run_dir)
    cfg_path = rd / "config.yaml"
    if not cfg_path.is_file():
        raise CmlError(f"{rd}: not a run directory (no config.yaml)")
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CmlError(f"{cfg_path}: unreadable ({e})") from None
    info = _read_json(rd / "run.json", "not a run directory")
    summary = _read_json(rd / "summary.json", "the run has not finished (finish it with cml train --resume)")
    if not isinstance(cfg, dict) or cfg.get("monitor") != "valid":
        label = info.get("protocol") or ("paper" if isinstance(cfg, dict) and cfg.get("monitor") == "test" else "?")
        raise CmlError(f"{cfg_path}: monitor is {cfg.get('monitor') if isinstance(cfg, dict) else None!r} "
                       f"(protocol {label}); refit takes an honest run, selected on validation (monitor: valid)")
    if not isinstance(summary.get("best_epoch"), int) or summary["best_epoch"] < 0:
        raise CmlError(f"{rd / 'summary.json'}: no best epoch (field 'best_epoch'); nothing to refit")
    return cfg, info, summary


def refit(run_dir: str | os.PathLike, out: str | os.PathLike, *, dataset: str | os.PathLike | Dataset | None = None,
          device: str | None = None, overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Refit the honest run ``run_dir`` into the new run directory ``out`` (module docstring) and
    return its summary. ``out/dataset`` holds the refit dataset, which ``out/run.json`` records."""
    from cml_dgl.outputs import check_output, write_mark
    from cml_dgl.train import config as config_mod
    from cml_dgl.train.trainer import Trainer

    out = check_output(out, "run", overwrite=overwrite,
                       inputs=[run_dir, None if isinstance(dataset, Dataset) else dataset])
    cfg_saved, info, summary = source_run(run_dir)
    if dataset is None and not info.get("dataset"):
        raise CmlError(f"{Path(run_dir) / 'run.json'}: records no dataset; pass the dataset")
    ds_src = dataset if isinstance(dataset, Dataset) else load_dataset(dataset or info["dataset"])
    if info.get("id_map_checksum") not in (None, ds_src.id_map_checksum()):
        raise CmlError(f"{ds_src.path}: not the dataset of {run_dir} (id-map checksum differs from its run.json)")
    sets = [f"epochs={summary['best_epoch']}", "monitor=none"] + ([f"device={device}"] if device else [])
    cfg = config_mod.resolve(base=cfg_saved, overrides=sets)
    out.mkdir(parents=True, exist_ok=True)
    write_mark(out, "run")  # a run directory from the start: it holds its dataset, then the run
    write_dataset(refit_dataset(ds_src, run_dir), out / REFIT_DATASET, overwrite=True)
    ds = load_dataset(out / REFIT_DATASET)
    trainer = Trainer(ds, cfg, out, quiet=quiet)
    trainer.prepare_run_dir(overwrite=True)
    return trainer.fit()
