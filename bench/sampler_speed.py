"""Seconds to draw one CML epoch: the host sampler (numpy, copied once) against the device sampler
(torch, on ``--device``), side by side in one process.

    python bench/sampler_speed.py [--interactions 1000000] [--device cpu|cuda] [--repeats 3] [--json]

The dataset is synthetic with the Tmall behavior shape and ``--interactions`` target (buy) edges;
the config is ``--preset tmall`` (batch 8192, meta batch and samples of the paper). Both samplers
draw the complete epoch: BPR triples of every behavior, both contrast samples and the meta users'
triples of every step. Prints seconds per 1M target interactions (best of ``--repeats``) and the
host/device ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interactions", type=int, default=1_000_000)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    from bench.common import add_threads_arg, apply_threads

    add_threads_arg(ap)
    args = ap.parse_args()
    apply_threads(args.threads)

    import torch

    from cml_dgl.data.synth import synthetic_dataset
    from cml_dgl.train import config
    from cml_dgl.train.devices import resolve_device
    from cml_dgl.train.trainer import Trainer

    device = resolve_device(args.device)
    n = args.interactions
    ds = synthetic_dataset(n // 10, n // 10, int(n / 0.40),
                           share={"pv": 0.45, "fav": 0.05, "cart": 0.10, "buy": 0.40}, seed=0)
    n_target = len(ds.edges(ds.n_behaviors - 1)[0])
    res: dict = {"device": str(device), "target_interactions": n_target,
                 "train_edges": int(sum(ds.train_counts().values())), "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in ("device", "host"):
            cfg = config.resolve(presets=["tmall"], overrides=[f"device={device.type}", "backend=torch",
                                                              f"sampler={sampler}"])
            tr = Trainer(ds, cfg, Path(tmp) / sampler, quiet=True)
            best = float("inf")
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t = time.perf_counter()
                steps = tr.strategy.draws.cml_steps()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - t)
            res[sampler] = {"steps": len(steps), "seconds_per_epoch": round(best, 4),
                            "seconds_per_1M_interactions": round(best * 1e6 / n_target, 4)}
    res["host_over_device"] = round(res["host"]["seconds_per_epoch"] / res["device"]["seconds_per_epoch"], 2)
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        for s in ("host", "device"):
            print(f"{s:6s} sampler: {res[s]['seconds_per_epoch']:.3f} s per epoch "
                  f"({res[s]['seconds_per_1M_interactions']:.3f} s per 1M target interactions, {res[s]['steps']} steps)")
        print(f"host / device: {res['host_over_device']}x on {device} ({res['threads']} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
