"""What the default CML costs beside the configuration before it (issue 13, point 5).

    python bench/default_cost.py --threads 2 [--datasets retailrocket,ijcai15,tmall-mbcgcn] [--epochs 4]
        [--rounds 1] [--vary KEY=VALUE ...] [--json]

On each development benchmark (its honest split, validation held out) the two configurations train
alternately, each in its own ``cml train`` subprocess with the same threads:

* ``before``: ``--preset authors-<dataset> --preset paper``, the default before issue 13 (the paper's
  equations, d = 16, the authors' hyperparameters);
* ``default``: ``--preset <dataset>`` (``--preset tmall --preset mbcgcn`` on the MB-CGCN lists);
* with ``--vary KEY=VALUE`` (repeatable), also ``default`` with ``--set KEY=VALUE``, named so: what one
  factor of the default costs, e.g. ``--vary aux_draws=target`` (the auxiliary draws before the
  default passed over every auxiliary edge). A dataset whose preset already sets that value skips it.

Printed per configuration: seconds per epoch (median over the epochs after the first, which pays
one-off costs), split into training and validation, and the subprocess's peak RSS (``wait4``);
per dataset the ratio default / before (and default / each varied configuration). The epochs each needs are the study's (docs/results.md):
the wall time to the selected epoch is its best epoch times its seconds per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    AUTHORS_PRESET, CML_PRESETS, ROOT, add_threads_arg, apply_threads, epoch_seconds, median_seconds, preset_args,
    published_dataset, tmall_mbcgcn_dataset)

#: the lists select on the full ranking (``--preset mbcgcn``); the configuration before does too
BEFORE_EXTRA = {"tmall-mbcgcn": ["--set", "monitor_protocol=full"]}
CONFIGS = {  # dataset: {configuration: cml train arguments}
    name: {"before": [*preset_args(AUTHORS_PRESET[name], "paper"), *BEFORE_EXTRA.get(name, [])],
           "default": preset_args(*presets)}
    for name, presets in CML_PRESETS.items()
}


def configurations(name: str, vary: list[str]) -> dict[str, list[str]]:
    """``before``, ``default`` and one configuration per ``KEY=VALUE`` of ``vary`` that changes the
    dataset's default (its resolved config)."""
    from cml_dgl.train import config

    out = dict(CONFIGS[name])
    default = config.resolve(presets=CML_PRESETS[name])
    for item in vary:
        key = config.parse_set(item)[0]
        if default[key] != config.resolve(presets=CML_PRESETS[name], overrides=[item])[key]:
            out[item] = [*out["default"], "--set", item]
    return out


def dataset(name: str, work: Path) -> Path:
    if name == "tmall-mbcgcn":
        return tmall_mbcgcn_dataset(holdouts=False, workdir=work, valid=True)
    return published_dataset(name, valid=True, workdir=work)


def run_once(ds: Path, args: list[str], epochs: int, threads: int, out: Path) -> dict:
    """One ``cml train`` of ``epochs`` epochs: its seconds per epoch and peak RSS."""
    cmd = [sys.executable, "-m", "cml_dgl_cli", "train", str(ds), "-o", str(out), *args, "--epochs", str(epochs),
           "--set", f"patience={epochs + 1}", "--threads", str(threads), "--device", "cpu", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{err[-2000:]}")
    seconds = epoch_seconds(out)
    cut = 1 if len(seconds["train_s"]) > 1 else 0  # the first epoch pays one-off costs
    return {**{k: v[cut:] for k, v in seconds.items()}, "peak_rss_gb": usage.ru_maxrss / 1024 ** 2,
            "command": " ".join(cmd[2:])}


def summarise(runs: list[dict]) -> dict:
    train = [x for r in runs for x in r["train_s"]]
    evals = [x for r in runs for x in r["eval_s"]]
    return {**median_seconds(train, evals), "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
            "command": runs[0]["command"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="retailrocket,ijcai15,tmall-mbcgcn")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=1, help="alternations of the two configurations")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--vary", action="append", default=[], metavar="KEY=VALUE",
                    help="also time the default with --set KEY=VALUE (repeatable)")
    ap.add_argument("--json", action="store_true")
    add_threads_arg(ap)
    args = ap.parse_args()
    threads = apply_threads(args.threads)
    if args.epochs < 2 or args.rounds < 1:
        sys.exit("bench: --epochs must be at least 2 and --rounds at least 1")
    names = args.datasets.split(",")
    for name in names:
        if name not in CONFIGS:
            sys.exit(f"bench: unknown dataset {name!r}; choose from {', '.join(CONFIGS)}")
    configs = {name: configurations(name, args.vary) for name in names}
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cml-cost-"))
    res: dict = {"threads": threads, "epochs": args.epochs, "rounds": args.rounds,
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "datasets": {}}
    for name in names:
        ds = dataset(name, work)
        runs: dict[str, list[dict]] = {k: [] for k in configs[name]}
        for r in range(args.rounds):
            for cfg, argv in configs[name].items():
                print(f"{name}: {cfg} (round {r + 1}/{args.rounds})", file=sys.stderr, flush=True)
                runs[cfg].append(run_once(ds, argv, args.epochs, threads, work / f"{name}-{cfg}-{r}"))
        sides = {cfg: summarise(v) for cfg, v in runs.items()}
        for other in (c for c in configs[name] if c != "default"):
            sides[f"ratio_default_over_{other}"] = {k: sides["default"][k] / sides[other][k]
                                                    for k in ("train_s", "eval_s", "epoch_s", "peak_rss_gb")}
        res["datasets"][name] = sides
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return
    print(f"{res['date']}, {threads} threads, {args.epochs} epochs x {args.rounds} rounds per configuration")
    for name, sides in res["datasets"].items():
        for cfg in configs[name]:
            s = sides[cfg]
            print(f"{name:13s} {cfg:8s} {s['epoch_s']:7.2f} s/epoch (train {s['train_s']:.2f} + valid "
                  f"{s['eval_s']:.2f}), peak RSS {s['peak_rss_gb']:.2f} GB")
        for other in (c for c in configs[name] if c != "default"):
            q = sides[f"ratio_default_over_{other}"]
            print(f"{name:13s} default / {other}: epoch {q['epoch_s']:.2f}x, train {q['train_s']:.2f}x, "
                  f"valid {q['eval_s']:.2f}x, peak RSS {q['peak_rss_gb']:.2f}x")


if __name__ == "__main__":
    main()
