"""``cml train``: option parsing only; the loop is ``cml_dgl.train.trainer.Trainer``."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cml_dgl.errors import CmlError

from .common import DeviceName, LazyChoice, handle_errors, threads_option
from .main import cli

if TYPE_CHECKING:
    from cml_dgl.train.run_dir import RunDir

def _presets():
    from cml_dgl.train.config import PRESETS
    return PRESETS


def _models():
    from cml_dgl.models.registry import MODELS
    return MODELS


def _variants():
    from cml_dgl.models.cml import VARIANTS
    return VARIANTS


def _backends():
    from cml_dgl.graph.backends import BACKENDS
    return BACKENDS


SHORTCUTS = ("model", "variant", "epochs", "patience", "seed", "device", "backend", "monitor")


def _interrupted(rundir: RunDir, cfg: dict, saved: dict) -> None:
    """Ctrl-C: say where the run stands and the command that continues it."""
    if not (rundir.path / "config.yaml").is_file():
        click.echo(f"interrupted before {rundir.path} was created; nothing to resume", err=True)
        return
    epoch = rundir.last_epoch()
    extra = "".join(f" --{k} {cfg[k]}" for k in ("epochs", "patience") if cfg[k] != saved.get(k, cfg[k]))
    state = f"its last checkpoint holds epoch {epoch}" if epoch is not None else "it has no checkpoint yet"
    click.echo(f"interrupted: {rundir.path} is kept and {state}; continue it with: "
               f"cml train --resume {shlex.quote(str(rundir.path))}{extra}", err=True)


@cli.command("train")
@click.argument("dataset", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--out", "run_dir", type=click.Path(path_type=Path),
              help="Run directory to create (config, metrics.jsonl, checkpoints).")
@click.option("--preset", "presets", multiple=True,
              type=LazyChoice(_presets),
              help="Config presets, repeatable (later wins): a dataset's settings (retailrocket, ijcai15, tmall; "
                   "mbcgcn for the list layout), the authors' hyperparameters (authors-<dataset>), the paper's "
                   "equations (paper), the authors' code (official), e.g. --preset authors-retailrocket "
                   "--preset official.")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="A YAML file of config keys, over the presets.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one config key (repeatable), over the file.")
@click.option("--model", type=LazyChoice(_models),
              default=None, help="Model to train (default from config: cml).")
@click.option("--variant", type=LazyChoice(_variants), default=None,
              help="CML ablation of the paper's Table 3 (default: full).")
@click.option("--epochs", type=click.IntRange(min=0), default=None, help="Number of epochs (config default 200).")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Stop after this many epochs without improvement of the monitored metric.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None, help="Seed of every random draw (config default 2023).")
@click.option("--device", type=DeviceName(), default=None,
              help="auto: CUDA when torch sees a GPU, else CPU; cuda:N for GPU N.")
@click.option("--backend", type=LazyChoice(_backends), default=None,
              help="Message passing: DGL HeteroGraphConv (CPU) or pure torch (any device); auto picks DGL on CPU when it imports.")
@click.option("--monitor", type=click.Choice(["valid", "test"]), default=None,
              help="Select the best epoch on the validation split (honest) or on the test split (the paper's way; the run is marked test-selected).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None,
              help="Continue the run in this directory from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the contents of an existing run directory.")
@click.option("--allow-changed-dataset", is_flag=True,
              help="--resume: go ahead when the dataset's files changed since the run was trained.")
@click.option("--quiet", is_flag=True, help="No progress bar and no per-epoch JSON lines on stdout.")
@handle_errors
@threads_option
def train(dataset, run_dir, presets, config_file, overrides, resume_dir, overwrite, allow_changed_dataset,
          quiet, **shortcuts):
    """Train CML (or a baseline) on DATASET into a run directory.

    One JSON line per epoch goes to RUN_DIR/metrics.jsonl (and stdout). Checkpoints last.pt and
    best.pt (by the monitored metric, monitor_metric: ndcg@10 by default) go to RUN_DIR/checkpoints; summary.json holds the result.

    Data-parallel: 'torchrun --nproc_per_node N -m cml_dgl_cli train ...' (or the cml script) splits each
    batch's loss terms over N processes (Gloo on the CPU, NCCL with --device cuda, one GPU each)
    and sums their gradients; only rank 0 writes RUN_DIR and prints.
    """
    from cml_dgl.data.dataset import load_dataset
    from cml_dgl.outputs import check_output
    from cml_dgl.train import config as config_mod
    from cml_dgl.train import distributed
    from cml_dgl.train.run_dir import RunDir
    from cml_dgl.train.trainer import RESUMABLE_KEYS, Trainer

    sets = list(overrides) + [f"{k}={v}" for k, v in shortcuts.items() if v is not None]
    if resume_dir is not None:
        if run_dir is not None and Path(run_dir).resolve() != Path(resume_dir).resolve():
            raise CmlError("--resume RUN_DIR and -o name different directories")
        run_dir = resume_dir
        cfg_path = Path(run_dir) / "config.yaml"
        if not cfg_path.is_file():
            raise CmlError(f"{run_dir}: not a run directory (no config.yaml) to resume")
        if presets or config_file:
            raise CmlError("--resume takes the run's saved config; --preset/--config are not allowed")
        saved = config_mod.read_config_file(cfg_path)
        cfg = config_mod.resolve(base=saved, base_where=str(cfg_path))
        for item in sets:
            key, value = config_mod.parse_set(item)
            if key not in RESUMABLE_KEYS and cfg.get(key) != value:
                raise CmlError(f"--resume: {key} cannot change in a resumed run (only {', '.join(RESUMABLE_KEYS)})")
        cfg = config_mod.resolve(base=saved, overrides=sets, base_where=str(cfg_path))
        if dataset is None:
            try:
                recorded = json.loads((Path(run_dir) / "run.json").read_text()).get("dataset")
            except (OSError, ValueError, AttributeError):
                recorded = None
            if not recorded or not isinstance(recorded, str):
                raise CmlError(f"{run_dir}/run.json: missing or records no dataset; pass DATASET")
            if not Path(recorded).exists():
                raise CmlError(f"{run_dir}/run.json: the run's dataset {recorded} is gone (moved or "
                               f"deleted); pass it: cml train --resume {run_dir} DATASET")
            dataset = Path(recorded)
    else:
        if dataset is None or run_dir is None:
            raise click.UsageError("DATASET and -o RUN_DIR are required (or --resume RUN_DIR)")
        check_output(run_dir, "run", overwrite=overwrite, inputs=[dataset, config_file])
        cfg = config_mod.resolve(presets, config_file, sets)
    ds = load_dataset(dataset)
    dist = distributed.init_from_env(cfg["device"])  # torchrun: one process per rank
    rundir = RunDir(run_dir, is_main=dist.is_main)
    try:
        if resume_dir is not None:  # before the trainer, which would refuse a --no-valid rebuild less clearly
            rundir.check_dataset(ds, allow_changed_dataset)
        trainer = Trainer(ds, cfg, run_dir, quiet=quiet, dist=dist)
        trainer.prepare_run_dir(overwrite=overwrite, resume=resume_dir is not None)
        if trainer.state.epoch > cfg["epochs"]:
            raise CmlError(f"--epochs {cfg['epochs']}: the run has already done {trainer.state.epoch} "
                           f"epochs; a resumed run can only go on (pass --epochs {trainer.state.epoch + 1} "
                           "or more)")
        summary = trainer.fit()
    except KeyboardInterrupt:
        if dist.is_main:
            _interrupted(rundir, cfg, saved if resume_dir is not None else cfg)
        sys.exit(130)
    finally:
        distributed.shutdown(dist)
    if dist.is_main:
        click.echo(json.dumps({"run_dir": str(run_dir), **summary}, sort_keys=True))
