"""``cml export-embeddings`` and ``cml recommend``: option parsing only (see ``cml_dgl.export``)."""

from __future__ import annotations

import json
import os

import click

from cli.common import handle_errors
from cli.main import cli


@cli.command("export-embeddings")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(), help="Output directory (created atomically).")
@click.option("--format", "fmt", type=click.Choice(["npy", "parquet", "csv"]), default="npy", show_default=True)
@click.option("--per-behavior", is_flag=True, help="Also write the behavior-specific embeddings.")
@click.option("--checkpoint", default="best", show_default=True, help="best, last, or a checkpoint path.")
@click.option("--dataset", type=click.Path(), default=None, help="Dataset directory (default: the run's).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@handle_errors
def export_cmd(run_dir, out, fmt, per_behavior, checkpoint, dataset, overwrite):
    """Write user and item embeddings with their raw ids, the per-user meta weights and a manifest."""
    from cml_dgl.export import export_embeddings
    from cml_dgl.outputs import check_output
    from cml_dgl.runs import load_run

    ckpt_file = checkpoint if os.path.exists(checkpoint) else None  # best, last...: inside RUN_DIR
    check_output(out, "export", overwrite=overwrite, inputs=[run_dir, dataset, ckpt_file])
    run = load_run(run_dir, checkpoint, dataset=dataset)
    manifest = export_embeddings(run, out, fmt=fmt, per_behavior=per_behavior, overwrite=overwrite)
    click.echo(f"wrote {', '.join(manifest['tables'])} ({manifest['n_users']} users, "
               f"{manifest['n_items']} items, d={manifest['dim']}) to {out}")


@cli.command("recommend")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--user", "raw_user", required=True, help="The user's raw id, as in the input log.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Number of items.")
@click.option("--include-purchased", is_flag=True, help="Do not exclude the user's training purchases.")
@click.option("--checkpoint", default="best", show_default=True, help="best, last, or a checkpoint path.")
@click.option("--dataset", type=click.Path(), default=None, help="Dataset directory (default: the run's).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@handle_errors
def recommend_cmd(run_dir, raw_user, k, include_purchased, checkpoint, dataset, as_json):
    """Top-k raw item ids with scores for one user."""
    from cml_dgl.export import recommend
    from cml_dgl.runs import load_run

    run = load_run(run_dir, checkpoint, dataset=dataset)
    recs = recommend(run, raw_user, k=k, include_purchased=include_purchased)
    if as_json:
        click.echo(json.dumps(recs))
    else:
        for r in recs:
            click.echo(f"{r['rank']:>3}  {r['item']}  {r['score']:.4f}")
