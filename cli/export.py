"""``cml export-embeddings`` and ``cml recommend``: option parsing only (see ``cml_dgl.export``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .common import handle_errors, threads_option
from .main import cli
from cml_dgl.errors import CmlError


@cli.command("export-embeddings")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(), help="Output directory (created atomically).")
@click.option("--format", "fmt", type=click.Choice(["npy", "parquet", "csv"]), default="npy", show_default=True)
@click.option("--per-behavior", is_flag=True, help="Also write the behavior-specific embeddings.")
@click.option("--checkpoint", default="best", show_default=True, help="best, last, or a checkpoint path.")
@click.option("--dataset", type=click.Path(), default=None, help="Dataset directory (default: the run's).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--allow-changed-dataset", is_flag=True,
              help="Go ahead when the dataset's files changed since the run was trained.")
@handle_errors
@threads_option
def export_cmd(run_dir, out, fmt, per_behavior, checkpoint, dataset, overwrite, allow_changed_dataset):
    """Write user and item embeddings with their raw ids, the per-user meta weights and a manifest."""
    from cml_dgl.export import export_embeddings
    from cml_dgl.outputs import check_output
    from cml_dgl.runs import load_run

    ckpt_file = checkpoint if os.path.exists(checkpoint) else None  # best, last...: inside RUN_DIR
    check_output(out, "export", overwrite=overwrite, inputs=[run_dir, dataset, ckpt_file])
    run = load_run(run_dir, checkpoint, dataset=dataset, allow_changed_dataset=allow_changed_dataset)
    manifest = export_embeddings(run, out, fmt=fmt, per_behavior=per_behavior, overwrite=overwrite)
    click.echo(f"wrote {', '.join(manifest['tables'])} ({manifest['n_users']} users, "
               f"{manifest['n_items']} items, d={manifest['dim']}) to {out}")


def _read_user_file(path: Path) -> tuple[list[str], list[str]]:
    """Raw user ids of a --users file, one per line (blank lines skipped), and where each came from."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise CmlError(f"{path}: cannot read the --users file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise CmlError(f"{path}: not a text file (byte {e.start} is not UTF-8); expected one raw user id per line") from None
    ids, where = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            ids.append(line.strip())
            where.append(f"{path}: line {n}")
    if not ids:
        raise CmlError(f"{path}: no user ids (expected one raw user id per line)")
    return ids, where


def _output_format(out: Path | None, fmt: str | None, as_json: bool) -> str:
    from cml_dgl.export import REC_FORMATS

    if as_json and fmt is not None:
        raise click.UsageError("--json and --format exclude each other (--json is --format jsonl as one list)")
    if out is None:
        if fmt == "parquet":
            raise click.UsageError("--format parquet writes a file: pass -o FILE.parquet")
        return "json" if as_json else fmt or "table"
    if as_json or fmt == "table":
        raise click.UsageError("-o writes csv, jsonl or parquet (--format), not a table or --json")
    fmt = fmt or out.suffix.lstrip(".").lower()
    if fmt not in REC_FORMATS:
        raise click.UsageError(f"cannot tell the format of -o {out} from its suffix; pass --format "
                               f"{'|'.join(REC_FORMATS)}")
    return fmt


@cli.command("recommend")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--user", "raw_users", multiple=True, metavar="RAW_ID",
              help="A user's raw id, as in the input log; repeatable.")
@click.option("--users", "users_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A text file of raw user ids, one per line.")
@click.option("--all-users", is_flag=True, help="Every user of the dataset.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Items per user.")
@click.option("--include-purchased", is_flag=True, help="Do not exclude the user's training purchases.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the recommendations to this file (atomically) instead of stdout.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl", "parquet"]), default=None,
              help="Columns user, rank, item, score [default: from the -o suffix, else table].")
@click.option("--overwrite", is_flag=True, help="Replace an existing -o file.")
@click.option("--checkpoint", default="best", show_default=True, help="best, last, or a checkpoint path.")
@click.option("--dataset", type=click.Path(), default=None, help="Dataset directory (default: the run's).")
@click.option("--allow-changed-dataset", is_flag=True,
              help="Go ahead when the dataset's files changed since the run was trained.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list of {user, rank, item, score}.")
@handle_errors
@threads_option
def recommend_cmd(run_dir, raw_users, users_file, all_users, k, include_purchased, out, fmt, overwrite,
                  checkpoint, dataset, allow_changed_dataset, as_json):
    """Top-k raw item ids with scores for one user, several or all, from one encoder pass."""
    import numpy as np

    from cml_dgl.export import recommend_users, recommendations_bytes, user_indices
    from cml_dgl.fsutil import atomic_write_bytes
    from cml_dgl.runs import load_run

    if (len(raw_users) > 0) + (users_file is not None) + all_users != 1:
        raise click.UsageError("name the users with --user RAW_ID (repeatable), --users FILE or --all-users: one of them")
    if k <= 0:
        raise CmlError(f"-k must be positive, got {k}")
    fmt = _output_format(out, fmt, as_json)
    if out is not None:
        if out.exists() and (out.is_dir() or not overwrite):
            raise CmlError(f"{out}: exists" + (" and is a directory" if out.is_dir() else " (pass --overwrite to replace it)"))
        if not out.parent.is_dir():
            raise CmlError(f"{out.parent}: no such folder for -o {out}")
    raw, where = (_read_user_file(users_file) if users_file is not None
                  else (list(raw_users), ["--user"] * len(raw_users)))
    run = load_run(run_dir, checkpoint, dataset=dataset, allow_changed_dataset=allow_changed_dataset)
    if all_users:
        users = np.arange(run.ds.n_users, dtype=np.int64)
    else:
        users = user_indices(run, raw, where)
        users = users[np.sort(np.unique(users, return_index=True)[1])]  # first occurrence of each
    table = recommend_users(run, users, k=k, include_purchased=include_purchased)
    if out is not None:
        atomic_write_bytes(out, recommendations_bytes(table, fmt))
        click.echo(f"wrote {len(table['rank']):,} recommendations for {len(users):,} users to {out}")
    elif fmt in ("csv", "jsonl"):
        click.echo(recommendations_bytes(table, fmt).decode(), nl=False)
    elif fmt == "json":
        click.echo(json.dumps([{"user": u, "rank": r, "item": i, "score": s} for u, r, i, s in zip(
            table["user"].tolist(), table["rank"].tolist(), table["item"].tolist(), table["score"].tolist())]))
    else:
        one = len(users) == 1
        for u, r, i, s in zip(table["user"].tolist(), table["rank"].tolist(), table["item"].tolist(),
                              table["score"].tolist()):
            click.echo(f"{r:>3}  {i}  {s:.4f}" if one else f"{u}  {r:>3}  {i}  {s:.4f}")
