"""Scale benchmark of ``cml preprocess taobao``: rows per second and peak RSS on a synthetic log.

Writes (or reuses) a file in the schema of Taobao's UserBehavior.csv with ``--rows`` rows,
power-law user and item popularity, power-law times over 9 days and the real file's behavior mix
(pv 89.5 %, fav 2.9 %, cart 5.5 %, buy 2.1 %), with about as many users and items per row as the
real file (987,994 users and 4,162,024 items for 100,150,807 rows). Then it times
``cml preprocess taobao`` on it as a subprocess and samples the child's resident memory.

    .venv/bin/python bench/preprocess_scale.py --rows 10000000 [--workdir DIR] [--json] [--delete]

Only the preprocess is timed; the peak RSS is the larger of psutil polling (every 0.1 s) and
``getrusage(RUSAGE_CHILDREN).ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BEHAVIORS = np.array(["pv", "fav", "cart", "buy"])
BEHAVIOR_P = np.array([0.895, 0.029, 0.055, 0.021])
T0, SPAN = 1511539200, 9 * 86400
ROWS_PER_USER, ROWS_PER_ITEM = 101.4, 24.1
CHUNK = 2_000_000


def _skewed(rng: np.random.Generator, n: int, size: int, power: float) -> np.ndarray:
    """Power-law ranks in [0, n): rank = floor(n * r**power) with r uniform (power > 1 = skew)."""
    return np.minimum((n * rng.random(size) ** power).astype(np.int64), n - 1)


def _scatter(rank: np.ndarray, n: int) -> np.ndarray:
    """Spread ranks over ids 1..2n with a bijective multiplicative hash (ids not in rank order)."""
    m = 2 * n + 1
    return (rank * 2654435761) % m + 1


def _write_chunk(path: Path, cols: dict[str, np.ndarray]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        table = pa.table(cols)
        opts = pacsv.WriteOptions(include_header=False, quoting_style="none")
        with open(path, "ab") as f:
            pacsv.write_csv(table, f, write_options=opts)
    except ImportError:
        import pandas as pd

        pd.DataFrame(cols).to_csv(path, mode="a", header=False, index=False)


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write ``rows`` synthetic UserBehavior rows to ``path`` (via a temporary file, then renamed)."""
    rng = np.random.default_rng(seed)
    n_users = max(10, int(rows / ROWS_PER_USER))
    n_items = max(200, int(rows / ROWS_PER_ITEM))
    n_cats = max(10, n_items // 440)
    tmp = path.with_name(path.name + ".part")
    tmp.unlink(missing_ok=True)
    for start in range(0, rows, CHUNK):
        m = min(CHUNK, rows - start)
        item_rank = _skewed(rng, n_items, m, 3.0)
        cols = {
            "user_id": _scatter(_skewed(rng, n_users, m, 1.5), n_users),
            "item_id": _scatter(item_rank, n_items),
            "category_id": _scatter(item_rank % n_cats, n_cats),
            "behavior_type": BEHAVIORS[rng.choice(4, size=m, p=BEHAVIOR_P)],
            "timestamp": T0 + (SPAN * rng.random(m) ** 1.5).astype(np.int64),
        }
        _write_chunk(tmp, cols)
    os.replace(tmp, path)


def run_preprocess(data: Path, out: Path) -> tuple[float, float]:
    """Run ``cml preprocess taobao`` as a child; returns (seconds, peak RSS in bytes)."""
    import psutil

    cmd = [sys.executable, "-c", "from cml_dgl_cli.main import cli; cli()", "preprocess", "taobao", str(data),
           "-o", str(out), "--overwrite", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        sys.exit(f"cml preprocess failed with exit code {proc.returncode}: {err.strip()}")
    peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    return seconds, float(peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic log")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the log and the dataset go (default: a temporary folder); "
                         "an existing log with the same row count is reused")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic log")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--delete", action="store_true", help="delete the log and dataset afterwards")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.common import add_threads_arg, apply_threads

    add_threads_arg(ap)
    args = ap.parse_args()
    apply_threads(args.threads)

    work = args.workdir or Path(tempfile.gettempdir()) / "cml-preprocess-scale"
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"userbehavior_{args.rows}_{args.seed}.csv"
    if not data.exists():
        t0 = time.perf_counter()
        generate(data, args.rows, args.seed)
        if not args.json:
            print(f"generated {data} ({data.stat().st_size / 2**30:.2f} GiB) in "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out = work / f"dataset_{args.rows}_{args.seed}"
    input_gb = data.stat().st_size / 1e9
    try:
        seconds, peak = run_preprocess(data, out)
    finally:
        if args.delete:
            data.unlink(missing_ok=True)
            shutil.rmtree(out, ignore_errors=True)
    result = {"rows": args.rows, "seconds": round(seconds, 2), "rows_per_s": round(args.rows / seconds),
              "peak_rss_gb": round(peak / 1e9, 3), "input_gb": round(input_gb, 3),
              "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"cml preprocess taobao: {args.rows:,} rows in {seconds:.1f} s = "
              f"{args.rows / seconds:,.0f} rows/s; peak RSS {peak / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
