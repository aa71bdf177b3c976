"""``cml preprocess`` and ``cml info`` (Click only; the work is in cml_dgl.data)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import handle_errors
from .main import cli
from cml_dgl.data.dataset import N_NEGATIVES, load_dataset, read_meta
from cml_dgl.data.preprocess import AUXILIARY_CHOICES, DEFAULT_SEED, preprocess
from cml_dgl.data.sources import NAMES
from cml_dgl.data.sources.tabular import DEFAULT_BLOCK_BYTES

_SOURCES_HELP = """SOURCE is one of:

\b
  taobao (alias tmall)  UserBehavior.csv, no header; behaviors pv,fav,cart,buy
  ijcai15               user_log_format1.csv (columns by name); click,fav,cart,buy
  retailrocket          events.csv; view,cart,buy (times stored in seconds)
  cml-pickle            a published split folder, kept as published: the authors' layout
                        (trn_<behavior>, tst_int) or SSLRec's (train_mat_<behavior>.pkl,
                        test_mat.pkl), plus the optional meta-user file
  csv                   a CSV with header user,item,behavior,timestamp; needs --behaviors
  lists                 a published split as adjacency lists (user item item ...): MB-CGCN's
                        <behavior>/train.txt folders with the target's test.txt, or GHCF's
                        train.txt (target), <behavior>.txt and test.txt

Duplicate (user, item, behavior) events become one edge with the earliest time. Each user's
latest purchase (ties: larger item id) is the test item, the latest remaining one the
validation item; the pair is removed from every behavior's training edges (see
--held-out-auxiliary). 99 negatives per test/validation user are drawn once with --seed and
stored. See docs/data-format.md.
"""


def _behaviors(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",")]
    if not value.strip() or any(not n for n in names) or len(set(names)) != len(names):
        raise click.BadParameter(f"expected distinct comma-separated names, target last; got {value!r}")
    return names


@cli.command("preprocess", help="Turn a raw log or a published split INPUT into a dataset folder.\n\n"
             + _SOURCES_HELP)
@click.argument("source", type=click.Choice(NAMES, case_sensitive=False), metavar="SOURCE")
@click.argument("input", type=click.Path(path_type=Path), metavar="INPUT")
@click.option("-o", "--out", "outdir", required=True, type=click.Path(path_type=Path),
              help="Dataset folder to write (written to a temporary sibling, then renamed).")
@click.option("--behaviors", callback=_behaviors, default=None,
              help="Behavior names in order, target last, e.g. view,cart,buy. Required for csv; "
                   "for cml-pickle it names the trn_<behavior> / train_mat_<behavior>.pkl files, "
                   "for lists the <behavior>/train.txt or <behavior>.txt files, when their order "
                   "is not known.")
@click.option("--min-purchases", type=click.IntRange(min=0), default=None,
              help="Keep users with at least this many distinct purchased items "
                   "[default: 3 for taobao/ijcai15, 2 for retailrocket/csv; not for cml-pickle/lists].")
@click.option("--min-user-interactions", type=click.IntRange(min=0), default=1, show_default=True,
              help="Keep users with at least this many deduplicated edges (any behavior).")
@click.option("--min-item-interactions", type=click.IntRange(min=0), default=1, show_default=True,
              help="Keep items with at least this many deduplicated edges (any behavior); "
                   "applied before the user filters.")
@click.option("--no-valid", "no_valid", is_flag=True, default=False,
              help="Hold out no validation item (cml-pickle, lists: keep the published training "
                   "split whole).")
@click.option("--held-out-auxiliary", type=click.Choice(AUXILIARY_CHOICES), default="auto",
              show_default=True,
              help="What happens to a held-out pair's auxiliary edges: drop (removed from every "
                   "behavior), keep (only the target edge goes), before (keep those earlier than the "
                   "held-out purchase; needs times). auto: drop for raw logs; for published splits, "
                   "applied to the carved validation item, what the published test split did (measured).")
@click.option("--auxiliary-holdouts", is_flag=True, default=False,
              help="lists, MB-CGCN's layout: also read each auxiliary behavior's <behavior>/test.txt "
                   "(a per-behavior holdout, not a target) as training edges of that behavior, as "
                   "CascadingRank's copy of the Tmall split does.")
@click.option("--negatives", type=click.IntRange(min=1), default=N_NEGATIVES, show_default=True,
              help="Stored negative candidates per test/validation user (sampled protocol).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=DEFAULT_SEED, show_default=True,
              help="Seed of the negative-candidate draw.")
@click.option("--block-bytes", type=click.IntRange(min=1024), default=DEFAULT_BLOCK_BYTES,
              show_default=True, help="Bytes of CSV parsed per block (lower it to save memory).")
@click.option("--overwrite", is_flag=True, default=False, help="Replace an existing output folder.")
@click.option("-q", "--quiet", is_flag=True, default=False, help="No progress bar on stderr.")
@handle_errors
def preprocess_cmd(source: str, input: Path, outdir: Path, behaviors: list[str] | None,
                   min_purchases: int | None, min_user_interactions: int, min_item_interactions: int,
                   no_valid: bool, held_out_auxiliary: str, auxiliary_holdouts: bool, negatives: int,
                   seed: int, block_bytes: int, overwrite: bool, quiet: bool) -> None:
    out = preprocess(source, input, outdir, behaviors=behaviors, min_purchases=min_purchases,
                     min_user_interactions=min_user_interactions,
                     min_item_interactions=min_item_interactions, valid=not no_valid,
                     negatives=negatives, seed=seed, overwrite=overwrite, quiet=quiet,
                     block_bytes=block_bytes, held_out_auxiliary=held_out_auxiliary,
                     auxiliary_holdouts=auxiliary_holdouts)
    meta = read_meta(out)
    edges = ", ".join(f"{b} {meta['train_edges'][b]:,}" for b in meta["behaviors"])
    stats = meta.get("options", {}).get("stats", {})
    dropped = ""
    if "users_dropped" in stats:
        dropped = (f"; the filters dropped {stats['users_dropped']:,} of {stats['raw_users']:,} users and "
                   f"{stats['items_dropped']:,} of {stats['raw_items']:,} items")
    click.echo(f"wrote {out}: {meta['n_users']:,} users, {meta['n_items']:,} items; training edges "
               f"{edges}; {meta['valid_users']:,} validation / {meta['test_users']:,} test users{dropped}")


@cli.command("info")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, default=False, help="Print one JSON object.")
@handle_errors
def info_cmd(dataset: Path, as_json: bool) -> None:
    """Summarise a dataset folder written by 'cml preprocess'."""
    info = load_dataset(dataset).info()
    if as_json:
        click.echo(json.dumps(info, sort_keys=True))
        return
    lines = [
        f"dataset   {dataset}",
        f"source    {info['source']}",
        f"users     {info['n_users']:,}",
        f"items     {info['n_items']:,}",
        f"behaviors {', '.join(info['behaviors'])} (target {info['target']})",
        "training edges " + ", ".join(f"{b} {c:,}" for b, c in info["train_edges"].items()),
        f"validation users {info['valid_users']:,}; test users {info['test_users']:,}",
        f"meta users {info['meta_users']:,}" if info["meta_users"] is not None else "meta users none",
        f"seed      {info['seed']}",
    ]
    click.echo("\n".join(lines))
