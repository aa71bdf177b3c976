"""Wall seconds of one CML training step at two or more revisions of this repository, side by side.

    python bench/ab_step.py --revs REV_A,REV_B [--dataset retailrocket] [--backend dgl]
                            [--threads 2] [--rounds 5] [--steps 8] [--set KEY=VALUE] [--json]

Each revision's ``cml_dgl`` is exported with ``git archive`` into a scratch folder. One process
per revision and round builds the trainer of ``--preset authors-<dataset> --preset paper`` (the
configuration ``bench/step_profile.py`` times) on the published split, runs one warm-up step and
times ``--steps`` steps with ``time.perf_counter``. The revisions alternate within every round, so
that a change in the machine's state hits them alike; each revision's figure is the median of its
rounds' medians, and the ratio of every revision to the first is printed. The dataset is prepared
once, and the steps are timed by this tree's ``bench.common`` helpers (those of
``bench/step_profile.py``), so the timed code must offer today's trainer interface
(``Trainer(...).strategy.step``, ``strategy.draws.cml_steps()``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, published_dataset  # noqa: E402

CHILD = r"""
import json, statistics, sys, time
root, tree, dataset, name, backend, threads, steps, sets = sys.argv[1:9]
sys.path[:0] = [tree, root]  # the revision's cml_dgl (its archive holds nothing else), this tree's bench
from pathlib import Path
import torch
torch.set_num_threads(int(threads))
import cml_dgl
from bench.common import authors_step_strategy, time_steps
tr, st = authors_step_strategy(Path(dataset), name, backend, json.loads(sets))
times, _, _ = time_steps(st, int(steps), time.perf_counter)
print(json.dumps({"median_s": statistics.median(times), "module": cml_dgl.__file__,
                  "backend": st.model.propagator.backend}))
"""


def export(rev: str, dest: Path) -> Path:
    """``rev``'s ``cml_dgl`` package (``git archive``) extracted into ``dest``, which is returned."""
    full = subprocess.run(["git", "rev-parse", "--verify", rev + "^{commit}"], cwd=ROOT, capture_output=True,
                          text=True)
    if full.returncode != 0:
        sys.exit(f"bench: {rev!r} is not a revision of {ROOT}")
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", full.stdout.strip(), "cml_dgl"], cwd=ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        sys.exit(f"bench: git archive {rev} failed")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--revs", required=True, help="comma-separated revisions; the first is the reference")
    ap.add_argument("--dataset", default="retailrocket", choices=["retailrocket", "ijcai15"])
    ap.add_argument("--backend", default="dgl", choices=["auto", "dgl", "torch"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    revs = [r for r in args.revs.split(",") if r]
    if len(revs) < 2 or min(args.rounds, args.steps, args.threads) < 1:
        sys.exit("bench: --revs needs two revisions or more; --rounds, --steps and --threads must be >= 1")
    dataset = published_dataset(args.dataset, valid=False)
    work = Path(tempfile.mkdtemp(prefix="cml-ab-step-"))
    trees = {rev: export(rev, work / f"rev{i}") for i, rev in enumerate(revs)}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    rounds: dict[str, list[float]] = {rev: [] for rev in revs}
    for r in range(args.rounds):
        for rev in (revs if r % 2 == 0 else revs[::-1]):
            proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(trees[rev]), str(dataset), args.dataset,
                                   args.backend, str(args.threads), str(args.steps), json.dumps(args.set)],
                                  env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"bench: revision {rev} failed:\n{proc.stderr[-2000:]}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            if not out["module"].startswith(str(trees[rev])):
                sys.exit(f"bench: revision {rev} imported {out['module']}, not its own tree")
            rounds[rev].append(out["median_s"])
            print(f"round {r + 1}/{args.rounds} {rev}: {out['median_s']:.4f} s/step ({out['backend']})", file=sys.stderr)
    med = {rev: statistics.median(v) for rev, v in rounds.items()}
    res = {"dataset": args.dataset, "backend": args.backend, "threads": args.threads, "steps": args.steps,
           "rounds": args.rounds, "overrides": args.set, "s_per_step_median": med, "per_round": rounds,
           "ratio_to_first": {rev: med[rev] / med[revs[0]] for rev in revs}}
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        for rev in revs:
            print(f"{rev}: {med[rev]:.4f} s/step, {res['ratio_to_first'][rev]:.3f}x of {revs[0]}")


if __name__ == "__main__":
    main()
