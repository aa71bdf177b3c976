"""``cml refit``: option parsing only; the work is ``cml_dgl.train.refit``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import DeviceName, handle_errors, threads_option
from .main import cli


@cli.command("refit")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path),
              help="New run directory (with the refit dataset in OUT/dataset).")
@click.option("--dataset", type=click.Path(path_type=Path), default=None,
              help="The source run's dataset (default: the one its run.json records).")
@click.option("--device", type=DeviceName(), default=None, help="Default: the source run's config.")
@click.option("--overwrite", is_flag=True, help="Replace the contents of an existing OUT.")
@click.option("--quiet", is_flag=True, help="No progress bar and no per-epoch JSON lines on stdout.")
@handle_errors
@threads_option
def refit_cmd(run_dir, out, dataset, device, overwrite, quiet):
    """Honest refit of a finished honest run (monitor valid): retrain on training + validation
    purchases, same config and seed, for exactly its best epoch count; then read the test split once.

    OUT/summary.json and OUT/run.json say protocol "honest-refit" and name RUN_DIR (refit_from).
    """
    from cml_dgl.train.refit import refit

    summary = refit(run_dir, out, dataset=dataset, device=device, overwrite=overwrite, quiet=quiet)
    click.echo(json.dumps({"run_dir": str(out), **summary}, sort_keys=True))
