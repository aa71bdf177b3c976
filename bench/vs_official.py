"""Seconds per epoch of the authors' CML code and of cml-dgl, side by side in one run.

    python bench/vs_official.py [--datasets retailrocket,ijcai15] [--epochs 3] [--threads N]
                                [--rounds 1] [--backends auto,torch] [--fast] [--set KEY=VALUE] [--json]
    python bench/vs_official.py --quick        # Retailrocket, 2 epochs each, one round

On each published benchmark the sides run one after the other, in subprocesses with the same
thread count (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and our ``--threads``), so that they share
the machine's state; with ``--rounds`` > 1 the order is reversed every other round. Sides:

* ``authors``: the authors' code (``../shared/reference/official-cml``, or ``$CML_REFERENCE``) as
  shipped, ``torch.autograd`` anomaly detection on; ``authors-noanomaly`` with ``CML_ANOMALY=0``.
  Their README command per dataset, run in a scratch directory under ``--workdir`` (it writes
  ``Model/`` and ``History/`` there); ``--epoch=E-1`` runs E epochs. Seconds per epoch come from
  its ``[EPOCHTIME] epoch e train T s test T s`` lines. IJCAI-15 needs the meta-user file that
  the authors did not publish: the users our trainer draws meta batches from (a purchase and an
  auxiliary behavior, shuffled with seed + 1), pickled as the code expects.
* ``ours-<backend>``: ``cml train --preset authors-<dataset> --preset paper`` (the same
  hyperparameters as the authors' README command, the model their code implements with its bugs
  fixed; the default before issue 13, not today's default model), on the published split without a validation carve-out and
  ``--monitor test``, so that every epoch evaluates the test users once as the authors' code
  does. Training and evaluation seconds per epoch come from ``metrics.jsonl`` (``seconds``,
  ``timings.eval``). With ``--fast``, also ``ours-<backend>-fast``: the same with the speed
  options that change only the rounding (``merged_item_mean``, ``used_view_rows``).

Every figure is the median over epochs, the first epoch of each run left out when a run has 3 or
more (it pays one-off costs on both sides). Ratios are the authors' seconds over ours: training,
evaluation and the whole epoch. The load average before and after is printed: measure on a quiet
machine. Outputs stay under ``--workdir`` (default: a new folder in /tmp).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    AUTHORS_PRESET, ROOT, epoch_seconds, median_seconds, preset_args, published_dataset, shared_data)

#: the authors' README command per dataset (reference README.md), with its dataset folder name
AUTHORS = {
    "retailrocket": ("retailrocket", "--sampNum=40 --lr=3e-4 --opt_base_lr=1e-4 --opt_max_lr=1e-3 "
                     "--opt_weight_decay=1e-4 --meta_opt_base_lr=1e-4 --meta_opt_max_lr=1e-3 "
                     "--meta_opt_weight_decay=1e-3 --meta_lr=1e-3 --batch=2048 --meta_batch=128 --SSL_batch=15"),
    "ijcai15": ("IJCAI_15", "--sampNum=10 --opt_base_lr=1e-3 --opt_max_lr=2e-3 --opt_weight_decay=1e-4 "
                "--meta_opt_base_lr=1e-4 --meta_opt_max_lr=1e-3 --meta_opt_weight_decay=1e-4 --meta_lr=1e-3 "
                "--batch=8192 --meta_batch=128 --SSL_batch=30"),
}
META_FILE = "meta_multi_single_beh_user_index_shuffle"
#: the speed options that change only the rounding (docs/design.md), for the ``-fast`` sides
FAST = ("merged_item_mean=true", "used_view_rows=true")
EPOCHTIME = re.compile(r"\[EPOCHTIME\] epoch (\d+) train ([0-9.]+) s test ([0-9.]+) s")


def reference_code() -> Path:
    env = os.environ.get("CML_REFERENCE")
    path = Path(env) if env else ROOT.parent / "shared" / "reference" / "official-cml"
    if not (path / "main.py").is_file():
        sys.exit(f"bench: the authors' code is not at {path} (set CML_REFERENCE to its folder)")
    return path


def thread_env(n: int, **extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n), **extra)


def authors_data(name: str, work: Path, seed: int) -> Path:
    """A ``--path`` folder holding the authors' dataset folder: links to the shared files, plus the
    meta-user file where the published split has none."""
    folder, _ = AUTHORS[name]
    src, root = shared_data() / name, work / "authors-data"
    dst = root / folder
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if (f.name.startswith("trn_") or f.name in ("tst_int", META_FILE)) and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    if not (dst / META_FILE).exists():
        import numpy as np

        from cml_dgl.data.dataset import load_dataset
        from cml_dgl.train.draws import default_meta_users

        ds = load_dataset(published_dataset(name, valid=False, workdir=work))
        users = np.asarray(default_meta_users(ds, np.random.default_rng(seed + 1)), dtype=np.int64)
        with open(dst / META_FILE, "wb") as fh:  # the input format of the authors' code, in scratch
            pickle.dump(users, fh)
    return root


def run_authors(name: str, anomaly: bool, epochs: int, threads: int, work: Path, data: Path) -> dict:
    folder, flags = AUTHORS[name]
    scratch = work / f"authors-{name}-{'anomaly' if anomaly else 'noanomaly'}-{time.monotonic_ns()}"
    for sub in ("Model", "History"):
        (scratch / sub / folder).mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(reference_code() / "main.py"), f"--path={data}/", f"--dataset={folder}",
           *flags.split(), f"--epoch={epochs - 1}"]
    log = scratch / "log.txt"
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=scratch, env=thread_env(threads, CML_ANOMALY="1" if anomaly else "0"),
                              stdout=fh, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    rows = [(int(e), float(tr), float(te)) for e, tr, te in EPOCHTIME.findall(text)]
    if proc.returncode != 0 or len(rows) != epochs:
        sys.exit(f"bench: the authors' code failed on {name} (exit {proc.returncode}, {len(rows)} of {epochs} "
                 f"epochs); log {log}:\n{text[-2000:]}")
    return {"train_s": [r[1] for r in rows], "eval_s": [r[2] for r in rows],
            "command": " ".join(shlex.quote(c) for c in cmd)}


def run_ours(name: str, backend: str, epochs: int, threads: int, work: Path, overrides: list[str]) -> dict:
    ds = published_dataset(name, valid=False, workdir=work)
    run = work / f"ours-{name}-{backend}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "cml_dgl_cli", "train", str(ds), "-o", str(run),
           *preset_args(AUTHORS_PRESET[name], "paper"), "--monitor", "test", "--epochs", str(epochs),
           "--patience", str(epochs + 1), "--backend", backend, "--device", "cpu", "--threads", str(threads),
           "--quiet", *[x for o in overrides for x in ("--set", o)]]
    proc = subprocess.run(cmd, cwd=ROOT, env=thread_env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: cml train failed on {name} ({backend}):\n{proc.stderr[-2000:]}")
    from cml_dgl.graph.backends import resolve_backend

    return {**epoch_seconds(run), "command": " ".join(shlex.quote(c) for c in cmd),
            "resolved_backend": resolve_backend(backend, "cpu")}


def summarise(runs: list[dict]) -> dict:
    """Median train, eval and epoch seconds over the epochs of all runs of one side."""
    train, evals = [], []
    for r in runs:
        cut = 1 if len(r["train_s"]) >= 3 else 0
        train += r["train_s"][cut:]
        evals += r["eval_s"][cut:]
    return {**median_seconds(train, evals), "epochs_timed": len(train),
            "per_epoch": [{"train_s": r["train_s"], "eval_s": r["eval_s"]} for r in runs],
            "command": runs[0]["command"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="retailrocket,ijcai15")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run of each side (>= 2)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rounds", type=int, default=1, help="runs of each side per dataset, alternating order")
    ap.add_argument("--backends", default="auto,torch", help="our message-passing backends to time")
    ap.add_argument("--sides", default="authors,authors-noanomaly,ours",
                    help="which of authors, authors-noanomaly, ours to run")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="our config override")
    ap.add_argument("--fast", action="store_true",
                    help="also time each backend with the speed options on (ours-<backend>-fast: " + ", ".join(FAST) + ")")
    ap.add_argument("--seed", type=int, default=2023, help="our seed (and the IJCAI-15 meta-user order)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="Retailrocket only, 2 epochs per run")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.quick:
        args.datasets, args.epochs = "retailrocket", 2
    names = [d for d in args.datasets.split(",") if d]
    if not names or any(d not in AUTHORS for d in names):
        sys.exit(f"--datasets: expected names from {sorted(AUTHORS)}, got {args.datasets!r}")
    if args.epochs < 2 or args.threads < 1 or args.rounds < 1:
        sys.exit("--epochs must be >= 2 (the authors' --epoch=0 divides by zero), --threads and --rounds >= 1")
    sides = [s for s in args.sides.split(",") if s]
    if any(s not in ("authors", "authors-noanomaly", "ours") for s in sides):
        sys.exit(f"--sides: expected authors, authors-noanomaly and/or ours, got {args.sides!r}")
    backends = [b for b in args.backends.split(",") if b] if "ours" in sides else []
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cml-vs-official-"))
    work.mkdir(parents=True, exist_ok=True)
    order = [s for s in sides if s != "ours"] + [f"ours-{b}" for b in backends]
    order += [f"ours-{b}-fast" for b in backends] if args.fast else []
    res: dict = {"date": datetime.date.today().isoformat(), "threads": args.threads, "epochs_per_run": args.epochs,
                 "rounds": args.rounds, "overrides": args.set, "cpus": os.cpu_count(),
                 "loadavg_start": os.getloadavg(), "command": " ".join(shlex.quote(a) for a in sys.argv),
                 "datasets": {}}
    for name in names:
        data = authors_data(name, work, args.seed) if any(s.startswith("authors") for s in order) else None
        published_dataset(name, valid=False, workdir=work)  # our import, outside the timed runs
        runs: dict[str, list[dict]] = {s: [] for s in order}
        for r in range(args.rounds):
            for side in (order if r % 2 == 0 else order[::-1]):
                print(f"{name}: {side} (round {r + 1}/{args.rounds})", file=sys.stderr, flush=True)
                if side.startswith("authors"):
                    runs[side].append(run_authors(name, side == "authors", args.epochs, args.threads, work, data))
                else:
                    backend, fast = side[len("ours-"):].removesuffix("-fast"), side.endswith("-fast")
                    runs[side].append(run_ours(name, backend, args.epochs, args.threads, work,
                                               args.set + list(FAST if fast else ()) + [f"seed={args.seed}"]))
        out = {side: summarise(rs) for side, rs in runs.items()}
        for side in order:
            if side.startswith("ours-"):
                out[side]["resolved_backend"] = runs[side][0]["resolved_backend"]
        ratios: dict = {}
        for a in (s for s in order if s.startswith("authors")):
            for o in (s for s in order if s.startswith("ours-")):
                ratios[f"{a} / {o}"] = {k: out[a][k] / out[o][k] for k in ("train_s", "eval_s", "epoch_s")}
        if len(backends) >= 2:
            for suffix in ("", "-fast") if args.fast else ("",):
                b1, b2 = (f"ours-{b}{suffix}" for b in backends[:2])
                ratios[f"{b1} / {b2}"] = {k: out[b1][k] / out[b2][k] for k in ("train_s", "eval_s", "epoch_s")}
        res["datasets"][name] = {"sides": out, "ratios": ratios}
    res["loadavg_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return
    print(f"{res['date']}, {args.threads} threads, {args.epochs} epochs per run, {args.rounds} round(s), "
          f"load average {res['loadavg_start'][0]:.2f} -> {res['loadavg_end'][0]:.2f}; {res['command']}")
    for name, d in res["datasets"].items():
        print(f"\n{name}: seconds per epoch (median; training + evaluation)")
        for side, s in d["sides"].items():
            label = side + (f" [{s['resolved_backend']}]" if "resolved_backend" in s else "")
            print(f"  {label:<28} {s['epoch_s']:8.3f} = {s['train_s']:.3f} + {s['eval_s']:.3f}")
        for pair, r in d["ratios"].items():
            print(f"  {pair:<40} {r['epoch_s']:6.1f}x epoch, {r['train_s']:6.1f}x training, "
                  f"{r['eval_s']:6.1f}x evaluation")


if __name__ == "__main__":
    main()
