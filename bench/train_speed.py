"""Seconds per training epoch, split into sampling, the three CML phases and evaluation.

    python bench/train_speed.py [--epochs 5] [--json] [--datasets retailrocket,ijcai] [--preset paper]
    python bench/train_speed.py --scale 1,4,16 [--max-steps 5] [--backend torch] [--json]

Datasets: the Retailrocket benchmark (published batch size 2048) and a synthetic dataset of the
IJCAI-15 size (17,435 users, 35,920 items, ~800,000 edges over 4 behaviors; batch 8192), each with
its preset. Also times the vectorised sampler on one epoch of 1 million target interactions.
The comparison with the authors' code is ``bench/vs_official.py``, which runs both sides in one run.

``--scale`` instead times synthetic datasets of 1x, 4x, ... the Tmall size (31,882 users, 31,232
items, 1,451,219 edges over pv/fav/cart/buy; all three scaled together) with the tmall preset, each
size in its own subprocess so that peak RSS is per size. Each size draws the full samples of one real
CML epoch (timed as sampling), then runs only its first ``--max-steps`` steps through
``MetaStep.run_epoch``; seconds per step is the median step after the first (warm-up) step, and
the epoch time is *projected* as steps per epoch x seconds per step. The summary fits
``s/step ~ edges^a`` and the epoch time's growth, and divides peak RSS by edges.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_threads_arg, apply_threads, peak_rss_gb, retailrocket_dataset  # noqa: E402

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
    from cml_dgl.train.draws import host as smp

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


TMALL = (31_882, 31_232, 1_451_219)  # users, items, edges over pv, fav, cart, buy


class _StepClock:
    """Stands in for the progress bar: records when each training step ends."""

    def __init__(self) -> None:
        self.ends: list[float] = [time.perf_counter()]

    def update(self, n: int = 1) -> None:
        self.ends.append(time.perf_counter())


def time_scale(scale: float, backend: str, max_steps: int, out: Path) -> dict:
    """One size, in this process: generation, graph build, sampling, and ``max_steps`` real steps."""
    from cml_dgl.data.synth import synthetic_dataset
    from cml_dgl.train import config
    from cml_dgl.train.trainer import Trainer

    users, items, edges = (round(x * scale) for x in TMALL)
    t = time.perf_counter()
    ds = synthetic_dataset(users, items, edges, ("pv", "fav", "cart", "buy"), seed=0)
    gen_s, gen_rss = time.perf_counter() - t, peak_rss_gb()
    cfg = config.resolve(presets=["tmall"], overrides=["epochs=1", f"backend={backend}", "device=cpu"])
    t = time.perf_counter()
    tr = Trainer(ds, cfg, out, quiet=True)
    build_s = time.perf_counter() - t
    all_steps = tr.strategy.draws.cml_steps
    tr.strategy.draws.cml_steps = lambda: all_steps()[:max_steps]
    clock = _StepClock()
    tr.strategy.run_epoch(1, lambda: clock.update(1), tr.timer)
    steps = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    timed = steps[1:] if len(steps) > 1 else steps
    s_per_step = statistics.median(timed)
    n_steps = tr.steps_per_epoch()
    return {"scale": scale, "users": users, "items": items, "edges": sum(ds.train_counts().values()),
            "purchases": len(ds.edges(ds.n_behaviors - 1)[0]), "backend": backend,
            "s_per_step": s_per_step, "first_step_s": steps[0], "steps_timed": len(timed),
            "steps_per_epoch": n_steps, "projected_s_per_epoch": n_steps * s_per_step,
            "sampling_s": tr.timer.seconds.get("sampling", 0.0), "build_s": build_s, "generate_s": gen_s,
            "phases_mean_s_incl_first_step": {k: v / len(steps) for k, v in tr.timer.seconds.items() if k != "sampling"},
            "gen_peak_rss_gb": gen_rss, "peak_rss_gb": peak_rss_gb()}


def _fit_exponent(x: list[float], y: list[float]) -> float:
    import numpy as np

    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def scale_summary(rows: list[dict], ram_gb: float = 24.0) -> dict:
    """Growth exponents versus edges and the largest edge count whose peak RSS fits ``ram_gb``."""
    out: dict = {}
    if len(rows) >= 2:
        e = [r["edges"] for r in rows]
        out["exp_s_per_step_vs_edges"] = _fit_exponent(e, [r["s_per_step"] for r in rows])
        out["exp_epoch_vs_edges"] = _fit_exponent(e, [r["projected_s_per_epoch"] for r in rows])
        out["exp_peak_rss_vs_edges"] = _fit_exponent(e, [r["peak_rss_gb"] for r in rows])
        a, b = sorted(rows, key=lambda r: r["edges"])[-2:]
        per_edge = (b["peak_rss_gb"] - a["peak_rss_gb"]) / (b["edges"] - a["edges"])
        out["marginal_rss_bytes_per_edge"] = per_edge * 1024 ** 3
        out["edges_fitting_24gb"] = b["edges"] + (ram_gb - b["peak_rss_gb"]) / per_edge if per_edge > 0 else None
        out["us_per_step_per_edge"] = b["s_per_step"] / b["edges"] * 1e6
    return out


def run_scales(scales: list[float], backend: str, max_steps: int, work: Path) -> list[dict]:
    rows = []
    for s in scales:
        cmd = [sys.executable, __file__, "--one-scale", str(s), "--max-steps", str(max_steps),
               "--backend", backend, "--workdir", str(work)]
        res = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"scale {s:g}: done", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--datasets", default="retailrocket,ijcai")
    ap.add_argument("--backend", default="auto", choices=["auto", "dgl", "torch"])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--scale", default=None,
                    help="comma-separated multiples of the Tmall size, e.g. 1,4,16 (replaces --datasets)")
    ap.add_argument("--max-steps", type=int, default=5,
                    help="with --scale: training steps timed per size (the first is warm-up)")
    ap.add_argument("--one-scale", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--preset", action="append", default=[],
                    help="presets layered over each dataset's own (repeatable), e.g. light or paper")
    add_threads_arg(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    if args.max_steps < 1:
        sys.exit("--max-steps must be >= 1")
    if args.one_scale is not None:
        work = Path(tempfile.mkdtemp(prefix="cml-scale-", dir=args.workdir))
        print(json.dumps(time_scale(args.one_scale, args.backend, args.max_steps, work / "run"), sort_keys=True))
        return
    if args.scale is not None:
        scales = [float(x) for x in args.scale.split(",")]
        work = args.workdir or Path(tempfile.mkdtemp(prefix="cml-speed-"))
        rows = run_scales(scales, args.backend, args.max_steps, work)
        summary = scale_summary(rows)
        if args.json:
            print(json.dumps({"rows": rows, "summary": summary}, sort_keys=True))
            return
        for r in rows:
            print(f"{r['scale']:g}x ({r['users']:,} users, {r['items']:,} items, {r['edges']:,} edges): "
                  f"{r['s_per_step']:.3f} s/step x {r['steps_per_epoch']} steps = "
                  f"{r['projected_s_per_epoch']:.1f} s/epoch (projected); sampling {r['sampling_s']:.2f} s, "
                  f"build {r['build_s']:.2f} s, peak RSS {r['peak_rss_gb']:.2f} GB")
        for k, v in summary.items():
            print(f"{k}: {v:.4g}" if v is not None else f"{k}: n/a")
        return
    import torch

    from cml_dgl.data.dataset import load_dataset
    from cml_dgl.data.synth import synthetic_dataset

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cml-speed-"))
    res: dict = {"backend": args.backend, "torch_threads": torch.get_num_threads(), "presets": args.preset,
                 "datasets": {}}
    for name in args.datasets.split(","):
        if name == "retailrocket":
            ds = load_dataset(retailrocket_dataset(valid=False, workdir=args.workdir))
            r = time_training(ds, ["retailrocket", *args.preset], ["monitor=test", f"backend={args.backend}"],
                              args.epochs, work / "run-rr")
        elif name == "ijcai":
            ds = synthetic_dataset(17_435, 35_920, 800_000, ("click", "fav", "cart", "buy"),
                                   share={"click": 0.76, "fav": 0.075, "cart": 0.001, "buy": 0.164}, seed=0)
            r = time_training(ds, ["ijcai15", *args.preset], [f"backend={args.backend}"], args.epochs, work / "run-ij")
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
        print(f"{name}: {r['seconds_per_epoch']:.3f} s/epoch over {r['steps_per_epoch']} steps [{parts}]")
    print(f"sampling: {res['sampling_seconds_per_1M_interactions']:.3f} s per 1M interactions")
    print(f"peak RSS: {res['peak_rss_gb']:.2f} GB, torch threads {res['torch_threads']}, backend {args.backend}")


if __name__ == "__main__":
    main()
