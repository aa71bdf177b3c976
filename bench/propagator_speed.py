"""Milliseconds per propagation (one layer over every behavior) of the two message-passing backends.

    python bench/propagator_speed.py [--dim 16] [--repeats 40]

On the Retailrocket benchmark graph; forward alone and forward + backward, side by side in one
process, with the ratio DGL / torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import retailrocket_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args()
    import torch

    from cml_dgl.data.dataset import load_dataset
    from cml_dgl.graph.backends import propagator_for_dataset

    ds = load_dataset(retailrocket_dataset(valid=False))
    hu = torch.randn(ds.n_users, args.dim, requires_grad=True)
    hi = torch.randn(ds.n_items, args.dim, requires_grad=True)
    out = {}
    for backend in ("torch", "dgl"):
        prop = propagator_for_dataset(ds, backend=backend)
        for _ in range(5):
            a, b = prop(hu, hi)
            (a.sum() + b.sum()).backward()
        t = time.perf_counter()
        for _ in range(args.repeats):
            prop(hu, hi)
        fwd = (time.perf_counter() - t) / args.repeats
        t = time.perf_counter()
        for _ in range(args.repeats):
            a, b = prop(hu, hi)
            (a.sum() + b.sum()).backward()
        both = (time.perf_counter() - t) / args.repeats
        out[backend] = {"forward_ms": round(fwd * 1e3, 3), "forward_backward_ms": round(both * 1e3, 3)}
    out["dgl_over_torch"] = round(out["dgl"]["forward_backward_ms"] / out["torch"]["forward_backward_ms"], 2)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
