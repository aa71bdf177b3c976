"""What the quality table has cost so far on this machine, and what the whole table will cost.

    python bench/table_cost.py [--out bench/out/quality] [--trials 20] [--seeds 3] [--json]

Reads the epoch times that ``cml tune`` and ``cml train`` / ``cml refit`` wrote under the output
folder of ``bench/quality_table.py`` (``seconds`` of every line of each run's ``metrics.jsonl``:
training and per-epoch evaluation, not process start-up or the final ``cml evaluate``). Per dataset
and model it prints the hours spent on tuning and on the table's runs, and projects the whole:
the mean trial (finished or pruned) times ``--trials``, the mean finished run of each protocol
times ``--seeds``. Training-free models have no epochs: their trials and runs count about 0 s. A model with no trial or no run of a protocol yet has no projection there ("?"), so
the projected total is a lower bound until every cell has started. The figures are as fast as the
runs were: the table's runs use ``--threads`` (1 by default), often beside another job.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

PROTOCOLS = ("paper", "honest", "honest-refit")


class CostError(Exception):
    """A folder or file that is not what quality_table.py writes."""


def run_seconds(run_dir: Path) -> float | None:
    """The summed epoch seconds of one run folder, None where it has no metrics."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    total = 0.0
    with path.open() as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                total += float(json.loads(line).get("seconds", 0.0))
            except (ValueError, AttributeError) as err:
                raise CostError(f"{path}, line {n}: expected a JSON object with 'seconds' ({err})") from None
    return total


def _projection(times: list[float], n: int) -> float | None:
    return statistics.fmean(times) * n if times else None


def cell_costs(out: Path, trials: int, seeds: int) -> list[dict]:
    """One row per (dataset, model) found under ``out``'s ``tune`` and ``runs`` folders."""
    pairs = sorted({(p.parent.name, p.name) for sub in ("tune", "runs") for p in (out / sub).glob("*/*") if p.is_dir()})
    rows = []
    for dataset, model in pairs:
        tuned = (out / "tune" / dataset / model).is_dir()
        trial_times = [t for d in sorted((out / "tune" / dataset / model / "trials").glob("*"))
                       if (t := run_seconds(d)) is not None]
        row = {"dataset": dataset, "model": model, "tuned": tuned, "trials_done": len(trial_times),
               "tune_s": sum(trial_times), "tune_projected_s": _projection(trial_times, trials) if tuned else 0.0}
        runs_s, projected, complete = 0.0, 0.0, True
        for protocol in PROTOCOLS:
            name = re.compile(rf"{re.escape(protocol)}-\d+")
            times = [t for d in sorted((out / "runs" / dataset / model).glob(f"{protocol}-*"))
                     if name.fullmatch(d.name) and (d / "summary.json").is_file()
                     and (t := run_seconds(d)) is not None]
            row[f"{protocol}_done"] = len(times)
            runs_s += sum(times)
            p = _projection(times, seeds)
            complete &= p is not None
            projected += p or 0.0
        row["runs_s"], row["runs_projected_s"] = runs_s, projected if complete else None
        rows.append(row)
    return rows


def _hours(s: float | None) -> str:
    return "?" if s is None else f"{s / 3600:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/out/quality"), help="quality_table.py's --out")
    ap.add_argument("--trials", type=int, default=20, help="trials per trainable model in the whole table")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per protocol in the whole table")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        if not (args.out / "tune").is_dir() and not (args.out / "runs").is_dir():
            raise CostError(f"{args.out} holds no tune/ or runs/ folder of bench/quality_table.py")
        rows = cell_costs(args.out, args.trials, args.seeds)
    except CostError as err:
        print(f"table_cost: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    spent = sum(r["tune_s"] + r["runs_s"] for r in rows)
    projected = sum((r["tune_projected_s"] or 0.0) + (r["runs_projected_s"] or 0.0) for r in rows)
    if args.json:
        print(json.dumps({"rows": rows, "spent_s": spent, "projected_s_at_least": projected}, sort_keys=True))
        return
    print("| dataset | model | trials done | tuning h | projected | runs done (paper/honest/refit) | runs h | projected |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        done = "/".join(str(r[f"{p}_done"]) for p in PROTOCOLS)
        tune = (f"{r['trials_done']} | {_hours(r['tune_s'])} | {_hours(r['tune_projected_s'])}"
                if r["tuned"] else "untuned | | ")
        print(f"| {r['dataset']} | {r['model']} | {tune} | {done} | {_hours(r['runs_s'])} | {_hours(r['runs_projected_s'])} |")
    print(f"\nspent {spent / 3600:.1f} h of epoch time; the cells started project to at least {projected / 3600:.1f} h")


if __name__ == "__main__":
    main()
