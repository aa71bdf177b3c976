"""``cml tune``: option parsing only; the study is ``cml_dgl.tuning``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import DeviceName, LazyChoice, handle_errors, threads_option
from .main import cli
from .train import _backends, _models, _presets

SHORTCUTS = ("epochs", "patience", "device", "backend")


@cli.command("tune")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--model", required=True, type=LazyChoice(_models), help="Model whose search space to tune.")
@click.option("--trials", required=True, type=click.IntRange(min=1),
              help="Trials in the study in all (a re-run continues up to this number).")
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path),
              help="Study folder: study.db, trials/, best.yaml, summary.json.")
@click.option("--preset", "presets", multiple=True, type=LazyChoice(_presets),
              help="Base config presets, as for train (the search overrides its keys).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="A YAML file of config keys.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key (repeatable).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None,
              help="Seed of the sampler and of every trial's training (config default 2023).")
@click.option("--epochs", type=click.IntRange(min=0), default=None, help="Epochs of each trial (config default 200).")
@click.option("--patience", type=click.IntRange(min=1), default=None, help="Early stopping of each trial.")
@click.option("--device", type=DeviceName(), default=None, help="As for train (config default auto).")
@click.option("--backend", type=LazyChoice(_backends), default=None, help="As for train (config default auto).")
@click.option("--startup-trials", type=click.IntRange(min=0), default=5,
              help="Random trials before TPE, and trials before the median pruner may prune.")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=5,
              help="Epochs of a trial before the pruner may stop it.")
@click.option("--quiet", is_flag=True, help="No progress bar and no JSON line per trial.")
@handle_errors
@threads_option
def tune_cmd(dataset, model, trials, out, presets, config_file, overrides, seed, startup_trials, warmup_epochs,
             quiet, **shortcuts):
    """Search MODEL's hyperparameters on DATASET's validation split with Optuna (TPE, median
    pruning on validation NDCG@10); the test split is never read.

    Prints one JSON line per finished trial and, last, the study's summary. OUT/best.yaml is the
    best trial's config: `cml train DATASET -o RUN --config OUT/best.yaml`.
    """
    from cml_dgl.tuning import tune

    sets = list(overrides) + [f"{k}={v}" for k, v in shortcuts.items() if v is not None]
    summary = tune(dataset, out, model=model, trials=trials, presets=presets, config=config_file, overrides=sets,
                   seed=seed, startup_trials=startup_trials, warmup_epochs=warmup_epochs, quiet=quiet)
    click.echo(json.dumps(summary, sort_keys=True))
