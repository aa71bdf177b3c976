"""Seconds per training epoch, split into sampling, the three CML phases and evaluation.

    python bench/train_speed.py [--epochs 5] [--json] [--datasets retailrocket,ijcai]

Datasets: the Retailrocket benchmark (published batch size 2048) and a synthetic dataset of the
IJCAI-15 size (17,435 users, 35,920 items, ~800,000 edges over 4 behaviors; batch 8192), each with
its preset. Also times the vectorised sampler on one epoch of 1 million target interactions.
The authors' implementation needs 10.5 s per epoch on Retailrocket on this machine (median of 95
epochs); the script prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import peak_rss_gb, retailrocket_dataset  # noqa: E402

AUTHORS_RETAILROCKET_S = 10.5


def time_training(ds, presets, overrides, epochs: int, out: Path) -> dict:
    from cml_dgl.train import config
    from cml_dgl.train.trainer import Trainer

    cfg = config.resolve(presets=presets, overrides=[f"epochs={epochs}", "patience=1000"] + overrides)
    tr = Trainer(ds, cfg, out, quiet=True)
    tr.prepare_run_dir(overwrite=True)
    tr.fit()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = rows[1:] if len(rows) > 2 else rows  # the first epoch pays one-off warm-up costs
    parts = sorted({k for r in rows for k in r["timings"]})
    return {
        "seconds_per_epoch": statistics.median(r["seconds"] for r in rows),
        "parts": {k: statistics.median(r["timings"].get(k, 0.0) for r in rows) for k in parts},
        "epochs_timed": len(rows),
        "steps_per_epoch": tr.steps_per_epoch(),
    }


def time_sampling(n_interactions: int = 1_000_000, repeats: int = 3) -> float:
    import numpy as np

    from cml_dgl.data.synth import synthetic_dataset
    from cml_dgl.train import sampler as smp

    # 1M target interactions, plus auxiliary behaviors of the Tmall shape
    ds = synthetic_dataset(100_000, 100_000, int(n_interactions / 0.40),
                           share={"pv": 0.45, "fav": 0.05, "cart": 0.10, "buy": 0.40}, seed=0)
    index = smp.edge_indices(ds)
    rng = np.random.default_rng(0)
    n = len(ds.edges(ds.n_behaviors - 1)[0])
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        smp.cml_epoch_samples(ds, index, rng)
        best = min(best, time.perf_counter() - t)
    return best * 1_000_000 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--datasets", default="retailrocket,ijcai")
    ap.add_argument("--backend", default="auto", choices=["auto", "dgl", "torch"])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    import torch

    from cml_dgl.data.dataset import load_dataset
    from cml_dgl.data.synth import synthetic_dataset

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cml-speed-"))
    res: dict = {"backend": args.backend, "torch_threads": torch.get_num_threads(), "datasets": {}}
    for name in args.datasets.split(","):
        if name == "retailrocket":
            ds = load_dataset(retailrocket_dataset(valid=False, workdir=args.workdir))
            r = time_training(ds, ["retailrocket"], ["monitor=test", f"backend={args.backend}"],
                              args.epochs, work / "run-rr")
            r["speedup_vs_authors"] = AUTHORS_RETAILROCKET_S / r["seconds_per_epoch"]
        elif name == "ijcai":
            ds = synthetic_dataset(17_435, 35_920, 800_000, ("click", "fav", "cart", "buy"),
                                   share={"click": 0.76, "fav": 0.075, "cart": 0.001, "buy": 0.164}, seed=0)
            r = time_training(ds, ["ijcai15"], [f"backend={args.backend}"], args.epochs, work / "run-ij")
        else:
            sys.exit(f"unknown dataset {name!r}")
        r["train_edges"] = sum(ds.train_counts().values())
        res["datasets"][name] = r
    res["sampling_seconds_per_1M_interactions"] = time_sampling()
    res["peak_rss_gb"] = peak_rss_gb()
    res["seconds_per_epoch"] = {k: v["seconds_per_epoch"] for k, v in res["datasets"].items()}
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return
    for name, r in res["datasets"].items():
        parts = ", ".join(f"{k} {v:.3f}" for k, v in r["parts"].items())
        extra = f"  ({r['speedup_vs_authors']:.1f}x faster than the authors' 10.5 s)" if "speedup_vs_authors" in r else ""
        print(f"{name}: {r['seconds_per_epoch']:.3f} s/epoch over {r['steps_per_epoch']} steps "
              f"[{parts}]{extra}")
    print(f"sampling: {res['sampling_seconds_per_1M_interactions']:.3f} s per 1M interactions")
    print(f"peak RSS: {res['peak_rss_gb']:.2f} GB, torch threads {res['torch_threads']}, backend {args.backend}")


if __name__ == "__main__":
    main()
