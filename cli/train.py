"""``cml train``: option parsing only; the loop is ``cml_dgl.train.trainer.Trainer``."""

from __future__ import annotations

import json
from pathlib import Path

import click
import yaml

from cli.common import handle_errors
from cli.main import cli
from cml_dgl.errors import CmlError

SHORTCUTS = ("model", "variant", "epochs", "patience", "seed", "device", "backend", "monitor")


@cli.command("train")
@click.argument("dataset", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--out", "run_dir", type=click.Path(path_type=Path),
              help="Run directory to create (config, metrics.jsonl, checkpoints).")
@click.option("--preset", "presets", multiple=True,
              type=click.Choice(["retailrocket", "ijcai15", "tmall", "official", "demo"]),
              help="Published hyperparameters; repeatable (later wins), e.g. --preset retailrocket --preset official.")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="A YAML file of config keys, over the presets.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one config key (repeatable), over the file.")
@click.option("--model", type=click.Choice(["cml", "pop", "pop-target", "mf", "lightgcn", "lightgcn-merged"]),
              default=None, help="Model to train (default from config: cml).")
@click.option("--variant", type=click.Choice(["full", "no-cl", "no-meta", "no-mke"]), default=None,
              help="CML ablation of the paper's Table 3 (default: full).")
@click.option("--epochs", type=click.IntRange(min=0), default=None, help="Number of epochs (config default 200).")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Stop after this many epochs without improvement of the monitored metric.")
@click.option("--seed", type=int, default=None, help="Seed of every random draw (config default 2023).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="auto: CUDA when torch sees a GPU, else CPU.")
@click.option("--backend", type=click.Choice(["auto", "dgl", "torch"]), default=None,
              help="Message passing: DGL HeteroGraphConv (CPU) or pure torch (any device); auto picks DGL on CPU when it imports.")
@click.option("--monitor", type=click.Choice(["valid", "test"]), default=None,
              help="Select the best epoch on the validation split (honest) or on the test split (the paper's way; the run is marked test-selected).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None,
              help="Continue the run in this directory from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the contents of an existing run directory.")
@click.option("--quiet", is_flag=True, help="No progress bar and no per-epoch JSON lines on stdout.")
@handle_errors
def train(dataset, run_dir, presets, config_file, overrides, resume_dir, overwrite, quiet, **shortcuts):
    """Train CML (or a baseline) on DATASET into a run directory.

    One JSON line per epoch goes to RUN_DIR/metrics.jsonl (and stdout). Checkpoints last.pt and
    best.pt (by the monitored metric, monitor_metric: ndcg@10 by default) go to RUN_DIR/checkpoints; summary.json holds the result.

    Data-parallel: 'torchrun --nproc_per_node N -m cli train ...' (or the cml script) splits each
    batch's loss terms over N processes (Gloo on the CPU, NCCL with --device cuda, one GPU each)
    and sums their gradients; only rank 0 writes RUN_DIR and prints.
    """
    from cml_dgl.data.dataset import load_dataset
    from cml_dgl.outputs import check_output
    from cml_dgl.train import config as config_mod
    from cml_dgl.train import distributed
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
        saved = yaml.safe_load(cfg_path.read_text())
        cfg = config_mod.resolve(base=saved)
        for item in sets:
            key, value = config_mod.parse_set(item)
            if key not in RESUMABLE_KEYS and cfg.get(key) != value:
                raise CmlError(f"--resume: {key} cannot change in a resumed run (only {', '.join(RESUMABLE_KEYS)})")
        cfg = config_mod.resolve(base=saved, overrides=sets)
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
    try:
        trainer = Trainer(ds, cfg, run_dir, quiet=quiet, dist=dist)
        trainer.prepare_run_dir(overwrite=overwrite, resume=resume_dir is not None)
        if trainer.state.epoch > cfg["epochs"]:
            raise CmlError(f"--epochs {cfg['epochs']}: the run has already done {trainer.state.epoch} "
                           f"epochs; a resumed run can only go on (pass --epochs {trainer.state.epoch + 1} "
                           "or more)")
        summary = trainer.fit()
    finally:
        distributed.shutdown(dist)
    if dist.is_main:
        click.echo(json.dumps({"run_dir": str(run_dir), **summary}, sort_keys=True))
