"""This machine's memory bandwidth, and the floor it sets for the sparse products of one CML step.

    python bench/memory_bandwidth.py [--mb 256] [--repeats 7] [--threads 1,2] [--floor ijcai15] [--json]

Bandwidth: the best of ``--repeats`` copies of a ``--mb`` MiB float32 array (numpy, one thread;
torch ``copy_`` at each ``--threads``), counted as bytes read + bytes written, and a read-only pass
(``sum``). Arrays are far larger than the caches, so this is DRAM bandwidth.

Floor (``--floor DATASET``): the bytes that the message-passing products of one training step
must move at the least, for the dataset's preset with the torch backend's CSR matrices: per
product the row offsets, column indices and values of the sparse matrix, its dense input read
once and its output written once (float32). A step runs two forward passes (the shared pass of
phases 1 and 3, the clone's phase-2 pass) and two backward passes (phases 1 and 3), each with
L layers x 2 sides: 8L products (24 for L = 3). That byte count divided by the copy bandwidth is the time under
which no implementation of those products can go on this machine; it is printed beside the
measured time of the same products (the step's 8L products run on random inputs, median of
``--repeats``), with and without ``merged_item_mean``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import published_dataset  # noqa: E402


def copy_bandwidth(mb: int, repeats: int, threads: list[int]) -> dict:
    import numpy as np
    import torch

    n = mb * 1024 ** 2 // 4
    src = np.random.default_rng(0).random(n, dtype=np.float32)
    dst = np.empty_like(src)
    res: dict = {"mib": mb}

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    nbytes = src.nbytes
    res["numpy_copy_gb_s"] = 2 * nbytes / best(lambda: np.copyto(dst, src)) / 1e9
    res["numpy_read_gb_s"] = nbytes / best(lambda: src.sum()) / 1e9
    ts, td = torch.from_numpy(src), torch.from_numpy(dst)
    before = torch.get_num_threads()
    res["torch_copy_gb_s"] = {}
    for t in threads:
        torch.set_num_threads(t)
        res["torch_copy_gb_s"][str(t)] = 2 * nbytes / best(lambda: td.copy_(ts)) / 1e9
    torch.set_num_threads(before)
    return res


def _csr_bytes(m, n_dense_cols: int, d: int) -> int:
    """Compulsory bytes of Y = M X for a CSR M (R x C): offsets, indices, values, X once, Y once."""
    R, C = m.shape
    index = m.col_indices().element_size()
    return ((R + 1) * index + m._nnz() * (index + m.values().element_size())
            + C * d * 4 + R * d * 4)


def floor(name: str, repeats: int, merged: bool) -> dict:
    import torch

    from cml_dgl.data.dataset import load_dataset
    from cml_dgl.graph.backends import _spmm, propagator_for_dataset
    from cml_dgl.graph.build import mean_item_adjacency
    from cml_dgl.train import config

    ds = load_dataset(published_dataset(name, valid=False))
    cfg = config.resolve(presets=[name])
    d, L = cfg["dim"], cfg["n_layers"]
    prop = propagator_for_dataset(ds, backend="torch", norm=cfg["norm"])
    m = prop._matrices(torch.float32)
    fwd = [m["ui"], m["iu"]]
    bwd = [m["ui_t"], m["iu_t"]]
    if merged:
        mean = mean_item_adjacency(prop._rel, cfg["norm"])
        fwd[1], bwd[1] = mean["iu"], mean["iu_t"]
    per_pass_f = sum(_csr_bytes(x, x.shape[1], d) for x in fwd)
    per_pass_b = sum(_csr_bytes(x, x.shape[1], d) for x in bwd)
    step_bytes = L * 2 * (per_pass_f + per_pass_b)
    inputs = [(x, torch.randn(x.shape[1], d)) for x in fwd + bwd]
    for x, h in inputs:
        _spmm(x, h)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(2 * L):  # two passes of L layers, forward and backward products
            for x, h in inputs:
                _spmm(x, h)
        times.append(time.perf_counter() - t)
    return {"dataset": name, "merged_item_mean": merged, "dim": d, "layers": L, "products_per_step": 8 * L,
            "bytes_per_step": step_bytes, "measured_products_s_per_step": statistics.median(times),
            "nnz": {k: int(v._nnz()) for k, v in m.items()}, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", default="1,2", help="torch thread counts for the copy (and the floor's products: the first)")
    ap.add_argument("--floor", default="ijcai15", help="dataset whose step floor to compute ('' for none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",") if t]
    if args.mb < 1 or args.repeats < 1 or not threads or min(threads) < 1:
        sys.exit("--mb, --repeats and every --threads entry must be >= 1")
    import torch

    res = {"bandwidth": copy_bandwidth(args.mb, args.repeats, threads)}
    if args.floor:
        torch.set_num_threads(threads[0])
        bw = res["bandwidth"]["torch_copy_gb_s"][str(threads[0])] * 1e9
        res["floor"] = []
        for merged in (False, True):
            f = floor(args.floor, args.repeats, merged)
            f["floor_s_per_step"] = f["bytes_per_step"] / bw
            f["measured_over_floor"] = f["measured_products_s_per_step"] / f["floor_s_per_step"]
            res["floor"].append(f)
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return
    b = res["bandwidth"]
    print(f"copy of {b['mib']} MiB: numpy {b['numpy_copy_gb_s']:.1f} GB/s (read+write), read {b['numpy_read_gb_s']:.1f} GB/s; "
          + ", ".join(f"torch {t} thread(s) {v:.1f} GB/s" for t, v in b["torch_copy_gb_s"].items()))
    for f in res.get("floor", []):
        print(f"{f['dataset']} step, {f['products_per_step']} sparse products (merged_item_mean={f['merged_item_mean']}): "
              f"{f['bytes_per_step'] / 1e6:.0f} MB -> floor {f['floor_s_per_step'] * 1e3:.1f} ms at "
              f"{threads[0]} thread(s); measured {f['measured_products_s_per_step'] * 1e3:.1f} ms "
              f"({f['measured_over_floor']:.1f}x the floor)")


if __name__ == "__main__":
    main()
