"""``cml evaluate``: option parsing only; the work is in ``cml_dgl.eval`` and ``cml_dgl.runs``."""

from __future__ import annotations

import json

import click

from .common import DeviceName, LazyChoice, handle_errors, parse_int_list, threads_option
from .main import cli


def _tie_rules():
    from cml_dgl.eval.metrics import TIE_RULES
    return TIE_RULES


@cli.command("evaluate")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--checkpoint", default="best", show_default=True,
              help="best, last, or a path to a checkpoint file.")
@click.option("--split", type=click.Choice(["test", "valid"]), default="test", show_default=True)
@click.option("--protocol", type=click.Choice(["sampled", "full", "both"]), default="sampled",
              show_default=True,
              help="sampled: the positive among its 99 stored negatives (the paper's); full: among all items.")
@click.option("-k", "ks", default="10,20,40", show_default=True, help="Cut-offs, comma-separated.")
@click.option("--mask", type=click.Choice(["target", "all"]), default="target", show_default=True,
              help="Full protocol: mask the user's training purchases, or every training behavior.")
@click.option("--tie-rule", type=LazyChoice(_tie_rules),
              default="expected", show_default=True,
              help="expected: exact average over random orders of tied items (no credit for luck).")
@click.option("--dataset", type=click.Path(), default=None, help="Dataset directory (default: the run's).")
@click.option("--device", type=DeviceName(), default="cpu", show_default=True,
              help="Device to score on: cpu, cuda, cuda:N (GPU N) or auto.")
@click.option("--allow-changed-dataset", is_flag=True,
              help="Go ahead when the dataset's files changed since the run was trained.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: one object, or a list for --protocol both.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (full protocol) on stderr.")
@handle_errors
@threads_option
def evaluate_cmd(run_dir, checkpoint, split, protocol, ks, mask, tie_rule, dataset, device,
                 allow_changed_dataset, as_json, quiet):
    """Evaluate a trained run on the test (or validation) split.

    Also prints the users whose held-out item is among their own auxiliary training items
    ("seen": viewed or carted, then bought) and the others ("new"), with their counts.
    """
    from cml_dgl.eval.evaluate import evaluate
    from cml_dgl.runs import load_run

    cutoffs = parse_int_list(ks, "-k")
    run = load_run(run_dir, checkpoint, dataset=dataset, device=device,
                   allow_changed_dataset=allow_changed_dataset)
    results = evaluate(run.ds, run.scorer(), split=split, protocol=protocol, ks=cutoffs,
                       tie_rule=tie_rule, mask=mask, seed=run.cfg["seed"], progress=not quiet)
    for r in results:
        r["checkpoint"] = str(run.checkpoint)
        r["model"] = run.cfg["model"]
    if as_json:
        click.echo(json.dumps(results[0] if len(results) == 1 else results, sort_keys=True))
        return
    for r in results:
        click.echo(f"{r['protocol']} / {r['split']} ({r['n_users']} users, ties: {r['tie_rule']}, "
                   f"{run.checkpoint}):")
        for key, v in r["metrics"].items():
            click.echo(f"  {key:<10} {v:.4f}")
        for name, group in r["groups"].items():
            values = "  ".join(f"{k} {v:.4f}" for k, v in (group["metrics"] or {}).items())
            click.echo(f"  {name} ({group['n_users']} users): {values or '-'}")
