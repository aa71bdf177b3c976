"""``cml demo`` and ``cml report``: option parsing only."""

from __future__ import annotations

from pathlib import Path

import click

from .common import handle_errors, threads_option
from .main import cli


@cli.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Directory for the log, dataset, runs, embeddings and report.")
@click.option("--users", type=click.IntRange(min=200), default=2500, show_default=True,
              help="Users in the generated log.")
@click.option("--items", type=click.IntRange(min=400), default=3000, show_default=True,
              help="Items in the generated log.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=2023, show_default=True)
@click.option("--overwrite", is_flag=True, help="Reuse a non-empty --out directory.")
@handle_errors
@threads_option
def demo(out, users, items, epochs, seed, overwrite):
    """Generate a realistic synthetic shop log and run the whole pipeline on it.

    preprocess -> train CML (the default and the paper's equations), MF and popularity -> evaluate
    (honest protocol, sampled and full) -> export
    embeddings -> report. Prints a short summary with the figures' paths.
    """
    from cml_dgl.demo import DemoSize, run_demo

    s = run_demo(out, DemoSize(users, items, epochs), seed=seed, overwrite=overwrite, log=click.echo)
    click.echo(f"\ndone in {s['seconds']} s. Test NDCG@10 (sampled 1+99 / full ranking; honest protocol: "
               "epoch chosen on validation, test read once):")
    labels = {"cml": "cml (default)", "cml-paper": "cml (paper's equations)"}
    for model, r in s["test"].items():
        click.echo(f"  {labels.get(model, model):<24} {r['sampled']['ndcg@10']:.4f} / {r['full']['ndcg@10']:.4f}")
    click.echo("figures: " + ", ".join(v for k, v in s["figures"].items() if k != "report"))
    click.echo(f"summary: {s['figures']['report']}  embeddings: {s['embeddings']}")


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the PNGs and report.md (default: RUN_DIR).")
@click.option("--checkpoint", default="best", show_default=True, help="Checkpoint for the meta weights.")
@handle_errors
@threads_option
def report(run_dir, out, checkpoint):
    """Plot losses and validation metrics per epoch and the meta weights; write report.md."""
    from cml_dgl.errors import CmlError
    from cml_dgl.export import meta_contrastive_weights
    from cml_dgl.report import check_report_dir, write_report
    from cml_dgl.runs import checkpoint_path, load_run

    check_report_dir(run_dir, out)
    weights = user_ids = None
    try:
        checkpoint_path(run_dir, checkpoint)
    except CmlError:
        if checkpoint != "best":  # a run without best.pt still gets its loss and metric figures
            raise
    else:
        run = load_run(run_dir, checkpoint)
        weights, user_ids = meta_contrastive_weights(run) or None, run.ds.user_ids
    paths = write_report(run_dir, out, meta_weights=weights, user_ids=user_ids)
    for name, p in paths.items():
        click.echo(f"{name}: {p}")
