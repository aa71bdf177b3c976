"""GPU acceptance check (issue #7): one run of a few minutes on a lent GPU machine.

    bash bench/gpu_check.sh                       # on the GPU machine, from the repository root
    bash bench/gpu_check.sh --device cpu --small  # the same checks on a CPU with smaller sizes

Stages, each printed as it finishes, then one ``RESULT {json}`` line:

1. ``equality``: a CML encoder built on the CPU and copied to the device (torch backend) gives the
   same fused and behavior-specific embeddings and the same gradients (max abs diff <= 1e-5).
1b. ``syncs``: host-device synchronisations counted by torch's sync debug mode while
   the device sampler draws an epoch (a bounded few) and during 5 training steps (must be 0), for
   the paper's and the official configuration.
2. ``retailrocket``: a few epochs of ``--preset retailrocket --monitor test`` on the published split:
   ``--retail DIR`` or ``bench/out/retail``, a dataset made by ``cml preprocess cml-pickle SRC -o
   bench/out/retail --no-valid`` (carry it to a machine without the shared data or without scipy),
   else preprocessed here from ``$CML_SHARED_DATA/retailrocket`` / ``../shared/data/retailrocket``.
3. ``tmall``: seconds per epoch on a synthetic dataset of Tmall's size (31,882 users, 31,232 items,
   1.45M edges, 4 behaviors), ``--preset tmall``; on a GPU also ``tmall_host_sampler``, the same
   with ``sampler=host`` (numpy draws copied once per epoch) against the default device sampler.
4. ``taobao``: the same on Taobao's user and item counts (987,994 users, 4,162,024 items) with 20M
   unique edges (``--taobao-edges``; the full log's 100M events do not fit the 5 minutes), the real
   log's behavior mix (pv 89.5 %, fav 2.9 %, cart 5.5 %, buy 2.1 %; every user keeps >= 4
   purchases, so buys exceed their share). If the time left (``--budget``) cannot cover building
   it, the largest fraction that fits is used and printed.

Per training stage: seconds per epoch (median of the epochs after the first, which pays warm-up;
evaluation included, and also given alone) and peak device memory (``torch.cuda.max_memory_allocated``).
The GPU image has torch, numpy, pandas and click but maybe not pyyaml/tqdm (pure Python, needed to
train): ``bash bench/gpu_check.sh --vendor`` copies them into ``bench/out/vendor`` beforehand (carry
that folder); scipy is optional (it only reads the Retailrocket pickles). Preparation here, then
the device run (bench/out/ is git-ignored, so it must be carried):

    bash bench/gpu_check.sh --vendor
    .venv/bin/python -m cml_dgl_cli preprocess cml-pickle ../shared/data/retailrocket -o bench/out/retail --no-valid
    # device run: command "bash bench/gpu_check.sh", carry bench/out/vendor and bench/out/retail
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "bench" / "out" / "vendor"
TAOBAO_MIX = {"pv": 0.895, "fav": 0.029, "cart": 0.055, "buy": 0.021}
TOLERANCE = 1e-5


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _setup_path() -> list[str]:
    """Make the repository importable, vendored pure-Python packages last; return missing modules."""
    sys.path.insert(0, str(ROOT))
    if VENDOR.is_dir():
        sys.path.append(str(VENDOR))
    need = ["torch", "numpy", "pandas", "click", "yaml", "tqdm"]
    return [m for m in need if not _has(m)]


class Clock:
    def __init__(self, budget: float) -> None:
        self.t0, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()


def _peak_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3) if device.type == "cuda" else None


# ---------------------------------------------------------------- 1. CPU vs device embeddings
def check_equality(device, small: bool) -> dict:
    import torch

    from cml_dgl.data.synth import synthetic_dataset
    from cml_dgl.graph.backends import propagator_for_dataset
    from cml_dgl.models.cml import CML

    ds = synthetic_dataset(300, 400, 6_000, seed=1) if small else synthetic_dataset(3_000, 4_000, 80_000, seed=1)
    res = {"users": ds.n_users, "items": ds.n_items, "edges": int(sum(ds.train_counts().values()))}
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    models = {"cpu": CML(ds.n_users, ds.n_items, ds.n_behaviors, propagator_for_dataset(ds, backend="torch"))}
    models["device"] = CML(ds.n_users, ds.n_items, ds.n_behaviors,
                           propagator_for_dataset(ds, backend="torch", device=device)).to(device)
    models["device"].load_state_dict(models["cpu"].state_dict())
    outs, grads = {}, {}
    for name, model in models.items():
        out = model(item_behavior=True)
        loss = (out.user.pow(2).sum() + out.item.pow(2).sum() + out.user_beh.pow(2).sum()) / ds.n_users
        loss.backward()
        outs[name] = {k: getattr(out, k).detach().to(cpu) for k in ("user", "item", "user_beh", "item_beh")}
        grads[name] = {k: p.grad.detach().to(cpu) for k, p in model.named_parameters()}
    res["max_abs_diff_embeddings"] = max(float((outs["cpu"][k] - outs["device"][k]).abs().max()) for k in outs["cpu"])
    res["max_abs_diff_grads"] = max(float((grads["cpu"][k] - grads["device"][k]).abs().max()) for k in grads["cpu"])
    res["ok"] = res["max_abs_diff_embeddings"] <= TOLERANCE and res["max_abs_diff_grads"] <= TOLERANCE
    if device.type == "cpu":
        res["note"] = "device is the CPU: this compares the CPU with itself (a smoke test of the check)"
    return res


# ---------------------------------------------------------------- 2. host syncs of a training step
def check_syncs(device, work: Path) -> dict:
    """Counts the host-device synchronisations (``torch.cuda.set_sync_debug_mode("warn")``) while
    drawing one epoch on the device and while running its first steps; a step must have none."""
    import warnings

    import torch

    from cml_dgl.data.synth import synthetic_dataset
    from cml_dgl.train import config
    from cml_dgl.train.trainer import Trainer

    cuda = device.type == "cuda"
    ds = synthetic_dataset(2_000, 3_000, 60_000, seed=2)
    res = {} if cuda else {"note": "CPU: the code runs, no syncs are counted (tests/test_gpu_path.py "
                                    "checks the CPU path with a dispatch probe)"}
    for variant in ("paper", "official"):
        cfg = config.resolve(presets=["official"] if variant == "official" else [],
                             overrides=[f"device={device.type}", "backend=torch", "batch_size=256",
                                        "sampler=device"])
        tr = Trainer(ds, cfg, work / f"run-syncs-{variant}", quiet=True)
        counts = {}
        for phase in ("draw", "steps"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    if phase == "draw":
                        steps = tr.strategy.draws.cml_steps()
                    else:
                        sums: dict = {}
                        for step in steps[:5]:
                            tr.strategy.step(step, sums, tr.timer)
                finally:
                    if cuda:
                        torch.cuda.set_sync_debug_mode("default")
                        torch.cuda.synchronize(device)
            syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
            counts[phase] = len(syncs)
            if phase == "steps" and syncs:
                res[f"{variant}_first_step_sync"] = syncs[0]
        res[variant] = {"sampler": tr.strategy.sampler, "steps_in_epoch": len(steps), "syncs_drawing_epoch": counts["draw"],
                        "syncs_in_5_steps": counts["steps"]}
    if cuda:
        res["ok"] = all(res[v]["syncs_in_5_steps"] == 0 for v in ("paper", "official"))
    return res


# ---------------------------------------------------------------- training stages
def train_epochs(ds, presets: list[str], overrides: list[str], device, epochs: int, clock: Clock,
                 work: Path, name: str) -> dict:
    """Train up to ``epochs`` epochs, stopping early when the next epoch would overrun the budget."""
    import torch

    from cml_dgl.train import config
    from cml_dgl.train.trainer import Trainer

    cfg = config.resolve(presets=presets, overrides=[f"device={device.type}", "backend=torch", "epochs=1",
                                                     "patience=1000", "monitor=test", *overrides])
    t = time.perf_counter()
    _peak_reset(device)
    tr = Trainer(ds, cfg, work / f"run-{name}", quiet=True)
    tr.prepare_run_dir(overwrite=True)
    setup_s = time.perf_counter() - t
    rows: list[dict] = []
    while len(rows) < epochs:
        if rows and clock.left() < 1.5 * rows[-1]["seconds"] + 5:
            print(f"  {name}: stopping after {len(rows)} epoch(s), the time budget is nearly spent", flush=True)
            break
        tr.cfg["epochs"] = len(rows) + 1
        tr.fit()
        rows = [json.loads(x) for x in (tr.run_dir / "metrics.jsonl").read_text().splitlines()]
        r = rows[-1]
        print(f"  {name}: epoch {r['epoch']} {r['seconds']:.2f} s (eval {r['timings'].get('eval', 0):.2f} s) "
              f"test {json.dumps(r['test'])} losses {json.dumps(r['losses'])}", flush=True)
    timed = rows[1:] if len(rows) > 1 else rows
    out = {
        "users": ds.n_users, "items": ds.n_items, "train_edges": int(sum(ds.train_counts().values())),
        "target_edges": int(ds.train_counts()[ds.behaviors[-1]]), "batch_size": cfg["batch_size"],
        "steps_per_epoch": tr.steps_per_epoch(), "sampler": tr.strategy.sampler, "epochs": len(rows),
        "setup_seconds": round(setup_s, 2),
        "seconds_per_epoch": round(statistics.median(r["seconds"] for r in timed), 3),
        "eval_seconds_per_epoch": round(statistics.median(r["timings"].get("eval", 0.0) for r in timed), 3),
        "first_epoch_seconds": rows[0]["seconds"] if rows else None,
        "peak_device_memory_gb": _peak_gb(device),
        "last_test": rows[-1]["test"] if rows else None,
        "last_losses": rows[-1]["losses"] if rows else None,
    }
    out["train_seconds_per_epoch"] = round(out["seconds_per_epoch"] - out["eval_seconds_per_epoch"], 3)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def retailrocket(args, device, clock: Clock, work: Path) -> dict:
    from cml_dgl.data.dataset import load_dataset

    path = args.retail
    if path is None and (ROOT / "bench" / "out" / "retail" / "meta.json").is_file():
        path = ROOT / "bench" / "out" / "retail"
    if path is None:
        src = _shared_data() / "retailrocket"
        if not src.is_dir():
            return {"skipped": f"{src} not found (set CML_SHARED_DATA, or pass --retail DIR, a dataset "
                               "made by `cml preprocess cml-pickle ... --no-valid`)"}
        if not _has("scipy"):
            return {"skipped": "scipy is not installed, and it is needed to read the Retailrocket pickles; "
                               "preprocess elsewhere (`cml preprocess cml-pickle SRC -o bench/out/retail "
                               "--no-valid`), carry bench/out/retail and pass --retail bench/out/retail"}
        from cml_dgl.data.preprocess import preprocess

        path = work / "retailrocket-novalid"
        t = time.perf_counter()
        preprocess("cml-pickle", src, path, valid=False, overwrite=True, quiet=True)
        print(f"  retailrocket: preprocessed {src} in {time.perf_counter() - t:.1f} s", flush=True)
    ds = load_dataset(path)
    return train_epochs(ds, ["retailrocket"], [], device, args.epochs, clock, work, "retailrocket")


def _shared_data() -> Path:
    import os

    env = os.environ.get("CML_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def synthetic(name: str, users: int, items: int, edges: int, share, device, epochs: int, clock: Clock,
              work: Path, overrides: tuple[str, ...] = ()) -> dict:
    from cml_dgl.data.synth import synthetic_dataset

    t = time.perf_counter()
    ds = synthetic_dataset(users, items, edges, share=share, seed=0)
    gen = time.perf_counter() - t
    print(f"  {name}: generated {users:,} users, {items:,} items, {edges:,} edges in {gen:.1f} s", flush=True)
    res = train_epochs(ds, ["tmall"], list(overrides), device, epochs, clock, work, name)
    res["generate_seconds"] = round(gen, 2)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--small", action="store_true", help="Smaller graphs (a CPU run that finishes in minutes).")
    ap.add_argument("--epochs", type=int, default=3, help="Epochs per training stage (the first is warm-up).")
    ap.add_argument("--taobao-edges", type=int, default=20_000_000)
    ap.add_argument("--budget", type=float, default=280.0, help="Seconds for the whole check.")
    ap.add_argument("--retail", type=Path, default=None, help="A preprocessed Retailrocket dataset directory.")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--skip", default="", help="Comma-separated stages to skip "
                    "(equality,syncs,retailrocket,tmall,tmall_host_sampler,taobao).")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core); printed")
    args = ap.parse_args()
    clock = Clock(args.budget)
    missing = _setup_path()
    if missing:
        print(f"gpu_check: missing Python modules {missing}: torch, numpy, pandas and click must be installed; "
              f"pyyaml and tqdm can be vendored with `bash bench/gpu_check.sh --vendor` on a machine that has "
              f"them (it fills {VENDOR.relative_to(ROOT)}, carry that folder)", file=sys.stderr)
        return 2
    import torch

    from bench.common import apply_threads
    from cml_dgl.train.devices import resolve_device

    apply_threads(args.threads)

    device = resolve_device(args.device)
    info = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "optional": {m: _has(m) for m in ("dgl", "scipy", "psutil")}}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    print(f"gpu_check: {json.dumps(info)}", flush=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cml-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    skip = {s for s in args.skip.split(",") if s}
    small = args.small
    results: dict = {"info": info}
    # (name, users, items, edges, share); the small sizes are 1/10 (tmall) and 1/50 (taobao) of the users
    tmall = (3_188, 3_123, 145_000) if small else (31_882, 31_232, 1_450_000)
    taobao = (19_760, 83_240, min(args.taobao_edges, 400_000)) if small else (987_994, 4_162_024, args.taobao_edges)
    stages = [
        ("equality", lambda: check_equality(device, small)),
        ("syncs", lambda: check_syncs(device, work)),
        ("retailrocket", lambda: retailrocket(args, device, clock, work)),
        ("tmall", lambda: synthetic("tmall", *tmall, None, device, args.epochs, clock, work)),
        # on a GPU, the same with the numpy sampler (one host-to-device copy per epoch) for comparison
        ("tmall_host_sampler", lambda: synthetic("tmall_host_sampler", *tmall, None, device, args.epochs, clock,
                                                 work, ("sampler=host",))
         if device.type == "cuda" else {"skipped": "the CPU's default is the host sampler (the tmall stage)"}),
        ("taobao", lambda: _taobao(taobao, device, args.epochs, clock, work, results)),
    ]
    failed = False
    for name, run in stages:
        if name in skip:
            continue
        t = time.perf_counter()
        try:
            res = run()
        except Exception as e:  # noqa: BLE001  (report every stage, then fail at the end)
            res = {"error": f"{type(e).__name__}: {e}"}
            failed = True
        res["stage_seconds"] = round(time.perf_counter() - t, 2)
        results[name] = res
        failed |= res.get("ok") is False
        print(f"{name}: {json.dumps(res, sort_keys=True)}", flush=True)
    results["total_seconds"] = round(clock.elapsed(), 1)
    print("RESULT " + json.dumps(results, sort_keys=True), flush=True)
    return 1 if failed else 0


def _taobao(size, device, epochs: int, clock: Clock, work: Path, results: dict) -> dict:
    """The Taobao-sized stage. Where the time left cannot cover it (generation, graph building and
    ``epochs`` epochs, extrapolated per edge from the Tmall stage with a 1.5x margin), users, items
    and edges are scaled down together to the largest fraction that fits."""
    users, items, edges = size
    tm, frac = results.get("tmall", {}), 1.0
    if "generate_seconds" in tm and "seconds_per_epoch" in tm:
        per_edge = 1.5 * (tm["generate_seconds"] + tm["setup_seconds"]
                          + epochs * tm["seconds_per_epoch"]) / max(tm["train_edges"], 1)
        frac = min(1.0, max(0.05, (clock.left() - 20) / (per_edge * edges)))
        if frac < 1.0:
            print(f"  taobao: {clock.left():.0f} s left fit about {frac:.0%} of the planned size; scaling users, "
                  f"items and edges by {frac:.2f}", flush=True)
    res = synthetic("taobao", int(users * frac), int(items * frac), int(edges * frac), TAOBAO_MIX, device,
                    epochs, clock, work)
    res["fraction_of_planned_size"] = round(frac, 3)
    return res


if __name__ == "__main__":
    sys.exit(main())
