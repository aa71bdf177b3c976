"""Users per second of `cml recommend --all-users` (batch top-k from one encoder pass).

    python bench/recommend_speed.py [--users 10000] [--items 30000] [--edges 600000] [-k 10]
                                    [--format csv] [--threads N] [--json]

Builds a synthetic Tmall-shaped dataset (pv/fav/cart/buy) of the given size and a CML run directory
with the initial model (``--epochs 0``: one checkpoint; the encoder pass and the ranking cost the
same for any weights), then times the whole command in a fresh process (``python -m cml_dgl_cli recommend
RUN --all-users -k K -o recs.<format>``: interpreter start, imports, loading, encoder, ranking,
writing) and, in this process, each part: loading the run, the encoder pass, recommend_topk over
all users (training purchases excluded) and formatting the file. Prints users/s for the command
and for the ranking alone, and a one-user call for comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, add_threads_arg, apply_threads  # noqa: E402


def _cli(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cml_dgl_cli", *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=30_000)
    ap.add_argument("--edges", type=int, default=600_000)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--format", default="csv", choices=["csv", "jsonl", "parquet"])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    add_threads_arg(ap)
    args = ap.parse_args()
    threads = apply_threads(args.threads)

    from cml_dgl.data.dataset import write_dataset
    from cml_dgl.data.synth import synthetic_dataset
    from cml_dgl.export import recommend_users, recommendations_bytes
    from cml_dgl.models.topk import recommend_topk
    from cml_dgl.runs import load_run

    work = Path(tempfile.mkdtemp(prefix="cml-rec-", dir=args.workdir))
    ds = synthetic_dataset(args.users, args.items, args.edges, ("pv", "fav", "cart", "buy"), seed=0)
    write_dataset(ds, work / "ds")
    subprocess.run([sys.executable, "-m", "cml_dgl_cli", "train", str(work / "ds"), "-o", str(work / "run"),
                    "--epochs", "0", "--quiet", "--device", "cpu"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    out = work / f"recs.{args.format}"
    command_s = _cli("recommend", str(work / "run"), "--all-users", "-k", str(args.k), "-o", str(out),
                     "--threads", str(threads))
    one_user_s = _cli("recommend", str(work / "run"), "--user", str(ds.user_ids[0]), "-k", str(args.k),
                      "--threads", str(threads))

    t = time.perf_counter()
    run = load_run(work / "run")
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    user, item = run.embeddings()
    encode_s = time.perf_counter() - t
    users = list(range(run.ds.n_users))
    exclude = run.ds.csr(run.ds.n_behaviors - 1)
    t = time.perf_counter()
    recommend_topk(user, item, users, args.k, exclude=exclude)
    topk_s = time.perf_counter() - t
    table = recommend_users(run, users, k=args.k)
    t = time.perf_counter()
    recommendations_bytes(table, args.format)
    format_s = time.perf_counter() - t
    res = {"users": run.ds.n_users, "items": run.ds.n_items, "k": args.k, "format": args.format,
           "threads": threads, "rows_written": int(len(table["rank"])), "file_mb": out.stat().st_size / 2 ** 20,
           "command_s": command_s, "command_users_per_s": run.ds.n_users / command_s,
           "one_user_command_s": one_user_s, "load_run_s": load_s, "encoder_s": encode_s,
           "topk_s": topk_s, "topk_users_per_s": run.ds.n_users / topk_s, "format_s": format_s}
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return
    print(f"cml recommend --all-users: {res['users']:,} users x {res['items']:,} items, k={args.k}, "
          f"{args.format}: {command_s:.2f} s = {res['command_users_per_s']:,.0f} users/s "
          f"(one user: {one_user_s:.2f} s; {threads} threads)")
    print(f"  in-process: load {load_s:.2f} s, encoder {encode_s:.2f} s, top-k {topk_s:.2f} s "
          f"({res['topk_users_per_s']:,.0f} users/s), format {format_s:.2f} s; "
          f"{res['rows_written']:,} rows, {res['file_mb']:.1f} MiB")


if __name__ == "__main__":
    main()
