"""``cml tune``: an Optuna search over a model's search space, selected on validation and blind to
the test split.

A *study* lives in one folder OUT:

* ``OUT/study.db`` - the Optuna study in SQLite (its settings under the user attribute
  ``cml_tune``: dataset, model, base config, search space, seed);
* ``OUT/trials/NNNN/`` - each trial's run directory (``cml train``'s layout);
* ``OUT/best.yaml`` - the best trial's whole config (``model:`` included), which
  ``cml train DATASET -o RUN --config OUT/best.yaml`` accepts; ``OUT/summary.json`` - the state of
  the study. Both are rewritten after every finished trial.

Each trial resolves the config layers of ``cml train`` (defaults < model defaults < presets < the
config file < ``--set``), then ``monitor: valid`` and the sampled values of the model's
:attr:`~cml_dgl.models.registry.ModelSpec.search_space` on top. The trial trains on a copy of the
dataset whose test split is empty (:func:`without_test`), so no trial can read the test split:
the trainer evaluates validation each epoch and skips its final test evaluation. Its objective
is the best validation ``monitor_metric`` (NDCG@10 by default); each epoch's validation value is
reported to Optuna, and a median pruner stops trials below the median of earlier trials at the
same epoch (after ``startup_trials`` trials and ``warmup_epochs`` epochs).

Sampling is TPE seeded by the config's ``seed`` (``--seed`` sets both), its first
``startup_trials`` trials random. Re-running the same command continues the study up to ``trials``
trials in all: trials left running by an interrupted process are marked failed and not counted,
the sampler is seeded with seed + the number of trials so far (a resumed study is reproducible
from the same interruption, not equal to an uninterrupted one), and a command that differs in
dataset, model, base config or space is refused. A trial that fails with a :class:`CmlError`
(e.g. diverged to NaN) is recorded with its error and counts. One process per study at a time.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from cml_dgl.data.dataset import Dataset, load_dataset
from cml_dgl.errors import CmlError
from cml_dgl.fsutil import atomic_write_bytes, atomic_write_json
from cml_dgl.models import registry
from cml_dgl.models.search_space import Choice, Distribution, IntRange, LogUniform, Uniform

STUDY_NAME = "cml-tune"
SETTINGS_ATTR = "cml_tune"
#: config keys that may differ when a study is resumed (they do not change what a trial computes)
RESUMABLE_KEYS = ("device",)


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise CmlError("cml tune needs optuna: pip install 'cml-dgl[tune]' (or optuna>=5.0)") from None
    return optuna


def without_test(ds: Dataset) -> Dataset:
    """A copy of ``ds`` with no test pairs and no test candidates (the training data shared)."""
    out = dataclasses.replace(ds, test=np.zeros((0, 2), dtype=np.int32),
                              test_negatives=np.zeros((0, ds.test_negatives.shape[1]), dtype=np.int32))
    assert len(out.test) == 0 and len(out.test_negatives) == 0
    return out


def suggest(trial: Any, key: str, dist: Distribution, cfg: Mapping[str, Any]) -> Any:
    """Draw ``key`` from ``dist`` for an Optuna ``trial``; ``cfg`` holds the values so far (for
    ``at_least`` and ``sum_at_most``)."""
    if isinstance(dist, LogUniform):
        low = max(dist.low, float(cfg[dist.at_least])) if dist.at_least else dist.low
        if low > dist.high:
            raise CmlError(f"search space: {key} is searched in [{dist.low:g}, {dist.high:g}] but must be at least "
                           f"{dist.at_least} = {cfg[dist.at_least]:g}")
        return trial.suggest_float(key, low, dist.high, log=True)
    if isinstance(dist, Uniform):
        high = dist.grid_high(cfg)
        if high < dist.low:
            raise CmlError(f"search space: {key} is searched from {dist.low:g} but {dist.sum_at_most[1]:g} - "
                           f"{dist.sum_at_most[0]} = {dist.sum_at_most[1] - float(cfg[dist.sum_at_most[0]]):g}")
        return dist.value(round((trial.suggest_float(key, dist.low, high, step=dist.step) - dist.low) / dist.step))
    if isinstance(dist, IntRange):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step)
    if isinstance(dist, Choice):
        return trial.suggest_categorical(key, list(dist.choices))
    raise TypeError(f"unknown distribution {dist!r}")


def _settings(ds: Dataset, model: str, base: dict[str, Any], space: Mapping[str, Distribution]) -> dict[str, Any]:
    return {"dataset": str(Path(ds.path).resolve()) if ds.path else None,
            "id_map_checksum": ds.id_map_checksum(), "model": model,
            "base_config": {k: v for k, v in base.items() if k not in RESUMABLE_KEYS},
            "search_space": {k: d.describe() for k, d in space.items()}}


def _check_resumed(saved: dict[str, Any], now: dict[str, Any], db: Path) -> None:
    for field in ("id_map_checksum", "model", "search_space", "base_config"):
        if saved.get(field) != now[field]:
            if field == "base_config":
                keys = sorted(k for k in set(saved[field]) | set(now[field])
                              if saved[field].get(k) != now[field].get(k))
                detail = ", ".join(f"{k}: {saved[field].get(k)!r} then, {now[field].get(k)!r} now" for k in keys[:3])
            else:
                detail = f"{saved.get(field)!r} then, {now[field]!r} now"
            what = "dataset" if field == "id_map_checksum" else field.replace("_", " ")
            raise CmlError(f"{db}: this study was made with another {what} ({detail}); "
                           "continue it with the same command, or tune into a new folder")


def _counted(trial: Any, states: Any) -> bool:
    """Trials that count toward ``trials``: finished ones, and failures tune recorded (an
    interrupted trial, failed on resume without an error, is done again)."""
    return trial.state in (states.COMPLETE, states.PRUNED) or (trial.state == states.FAIL
                                                             and "error" in trial.user_attrs)


def _line(trial: Any, states: Any, metric: str) -> dict[str, Any]:
    state = {states.COMPLETE: "complete", states.PRUNED: "pruned", states.FAIL: "fail"}[trial.state]
    row: dict[str, Any] = {"trial": trial.number, "state": state, "params": trial.params,
                           "run_dir": trial.user_attrs.get("run_dir")}
    if state == "complete":
        row.update(value=trial.value, metric=f"valid {metric}", best_epoch=trial.user_attrs.get("best_epoch"))
    elif state == "pruned":
        row["pruned_at_epoch"] = max(trial.intermediate_values) if trial.intermediate_values else None
    else:
        row["error"] = trial.user_attrs.get("error")
    return row


def _write_best(out: Path, study: Any, states: Any, metric: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``best.yaml`` (when a trial has completed) and ``summary.json``; return the summary."""
    trials = study.get_trials(deepcopy=False)
    counts = {name: sum(t.state == s for t in trials) for name, s in
              (("complete", states.COMPLETE), ("pruned", states.PRUNED), ("fail", states.FAIL))}
    summary: dict[str, Any] = {"study": str(out / "study.db"), "model": settings["model"],
                               "dataset": settings["dataset"], "metric": f"valid {metric}",
                               "trials": counts, "best_trial": None}
    complete = [t for t in trials if t.state == states.COMPLETE]
    if complete:
        best = study.best_trial
        cfg_text = (Path(best.user_attrs["run_dir"]) / "config.yaml").read_text()
        header = (f"# cml tune: trial {best.number} of {out / 'study.db'}, valid {metric} {best.value:.6f} "
                  f"at epoch {best.user_attrs.get('best_epoch')}\n"
                  f"# cml train DATASET -o RUN_DIR --config {out / 'best.yaml'}\n")
        atomic_write_bytes(out / "best.yaml", (header + cfg_text).encode())
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                       best_epoch=best.user_attrs.get("best_epoch"), best_run_dir=best.user_attrs["run_dir"],
                       best_config=str(out / "best.yaml"))
    atomic_write_json(out / "summary.json", summary)
    return summary


def tune(dataset: Dataset | str | Path, out: str | Path, *, model: str, trials: int,
         presets: Iterable[str] = (), config: str | Path | None = None, overrides: Iterable[str] = (),
         seed: int | None = None, startup_trials: int = 5, warmup_epochs: int = 5, pruner: Any = None,
         quiet: bool = False) -> dict[str, Any]:
    """Run (or continue) the study in ``out`` up to ``trials`` trials in all; returns its summary
    (module docstring). ``overrides`` are ``key=value`` strings; ``pruner`` replaces the median
    pruner (an Optuna pruner)."""
    from tqdm import tqdm

    from cml_dgl.train import config as config_mod
    from cml_dgl.train.trainer import Trainer

    optuna = _optuna()
    states = optuna.trial.TrialState
    if trials < 1 or startup_trials < 0 or warmup_epochs < 0:
        raise CmlError(f"tune: trials must be >= 1 and startup_trials, warmup_epochs >= 0, got {trials}, "
                       f"{startup_trials}, {warmup_epochs}")
    spec = registry.spec(model)
    if not spec.search_space:
        raise CmlError(f"model {model!r} has no search space (nothing to tune; see the registry's search_space)")
    sets = list(overrides) + [f"model={model}"] + ([f"seed={seed}"] if seed is not None else []) + ["monitor=valid"]
    base = config_mod.resolve(presets, config, sets)
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    if len(ds.valid) == 0:
        raise CmlError(f"{ds.path or 'dataset'}: has no validation split, and tune selects on validation "
                       "(re-run preprocess without --no-valid)")
    trial_ds = without_test(ds)
    metric = base["monitor_metric"]
    settings = _settings(ds, model, base, spec.search_space)

    def run_trial(trial: Any, run_dir: Path) -> tuple[Any, float | None]:
        """Train one trial into ``run_dir``: ``(state, value)`` for ``study.tell``."""
        try:
            params: dict[str, Any] = {}
            for key, dist in spec.search_space.items():
                params[key] = suggest(trial, key, dist, {**base, **params})
            cfg = config_mod.resolve(presets, config, sets + [f"{k}={v!r}" for k, v in params.items()])
            assert cfg["monitor"] == "valid" and len(trial_ds.test) == 0  # a trial never reads the test split

            def report(epoch: int, row: dict[str, Any]) -> None:
                trial.report(row["valid"][metric], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

            trainer = Trainer(trial_ds, cfg, run_dir, quiet=True)
            trainer.prepare_run_dir()
            result = trainer.fit(on_epoch=report)
        except optuna.TrialPruned:
            return states.PRUNED, None
        except CmlError as e:
            trial.set_user_attr("error", str(e))
            return states.FAIL, None
        trial.set_user_attr("best_epoch", result["best_epoch"])
        return states.COMPLETE, result["best"]["valid"][metric]

    out = Path(out)
    db = out / "study.db"
    if out.exists() and not db.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CmlError(f"{out}: exists and holds no study.db (not a cml tune folder); tune into a new folder")
    (out / "trials").mkdir(parents=True, exist_ok=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = f"sqlite:///{db.resolve()}"
        known = optuna.load_study(study_name=STUDY_NAME, storage=storage) if db.exists() else None
        if known is not None:
            _check_resumed(known.user_attrs.get(SETTINGS_ATTR) or {}, settings, db)
            for t in known.get_trials(deepcopy=False, states=(states.RUNNING,)):
                known.tell(t.number, state=states.FAIL)  # left by an interrupted process
        n_before = len(known.get_trials(deepcopy=False)) if known is not None else 0
        study = optuna.create_study(
            storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=base["seed"] + n_before, n_startup_trials=startup_trials),
            pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                                         n_warmup_steps=warmup_epochs))
        if known is None:
            study.set_user_attr(SETTINGS_ATTR, settings)
        done = sum(_counted(t, states) for t in study.get_trials(deepcopy=False))
        summary = _write_best(out, study, states, metric, settings)
        with tqdm(total=trials, initial=min(done, trials), desc="tune", unit="trial", file=sys.stderr,
                  disable=quiet) as bar:
            while done < trials:
                trial = study.ask()
                run_dir = out / "trials" / f"{trial.number:04d}"
                trial.set_user_attr("run_dir", str(run_dir))
                state, value = run_trial(trial, run_dir)
                frozen = study.tell(trial, value, state=state)
                done += 1
                summary = _write_best(out, study, states, metric, settings)
                bar.update(1)
                if summary["best_trial"] is not None:
                    bar.set_postfix(best=f"{summary['best_value']:.4f}", trial=summary["best_trial"])
                if not quiet:
                    print(json.dumps({**_line(frozen, states, metric), "best_trial": summary["best_trial"]},
                                     sort_keys=True), flush=True)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return summary
