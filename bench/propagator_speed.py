"""Milliseconds per propagation (one layer over every behavior) of the two message-passing backends.

    python bench/propagator_speed.py [--dim 16] [--repeats 40] [--rounds 7]

On the Retailrocket benchmark graph; forward alone and forward + backward, side by side in one
process, with the ratio DGL / torch. The backends alternate for ``--rounds`` rounds of ``--repeats``
calls each and every figure is the median round, so that load from other processes on a shared
machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_threads_arg, apply_threads, retailrocket_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=7)
    add_threads_arg(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    if args.repeats < 1 or args.rounds < 1:
        sys.exit("--repeats and --rounds must be >= 1")
    import torch

    from cml_dgl.data.dataset import load_dataset
    from cml_dgl.graph.backends import propagator_for_dataset

    ds = load_dataset(retailrocket_dataset(valid=False))
    hu = torch.randn(ds.n_users, args.dim, requires_grad=True)
    hi = torch.randn(ds.n_items, args.dim, requires_grad=True)
    props = {backend: propagator_for_dataset(ds, backend=backend) for backend in ("torch", "dgl")}
    for prop in props.values():
        for _ in range(5):
            a, b = prop(hu, hi)
            (a.sum() + b.sum()).backward()
    times: dict = {backend: {"forward_ms": [], "forward_backward_ms": []} for backend in props}
    for _ in range(args.rounds):
        for backend, prop in props.items():
            t = time.perf_counter()
            for _ in range(args.repeats):
                prop(hu, hi)
            times[backend]["forward_ms"].append((time.perf_counter() - t) / args.repeats)
            t = time.perf_counter()
            for _ in range(args.repeats):
                a, b = prop(hu, hi)
                (a.sum() + b.sum()).backward()
            times[backend]["forward_backward_ms"].append((time.perf_counter() - t) / args.repeats)
    out: dict = {backend: {k: round(statistics.median(v) * 1e3, 3) for k, v in t.items()}
                 for backend, t in times.items()}
    out["rounds"] = args.rounds
    out["dgl_over_torch"] = round(out["dgl"]["forward_backward_ms"] / out["torch"]["forward_backward_ms"], 2)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
