"""Shared helpers for the benchmark scripts (not a test module)."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: each development benchmark's CML presets (today's default there) and the authors' hyperparameters
#: for it; ``--preset AUTHORS --preset paper`` is the default before issue 13
CML_PRESETS = {"retailrocket": ("retailrocket",), "ijcai15": ("ijcai15",), "tmall-mbcgcn": ("tmall", "mbcgcn")}
AUTHORS_PRESET = {"retailrocket": "authors-retailrocket", "ijcai15": "authors-ijcai15", "tmall-mbcgcn": "authors-tmall"}


def preset_args(*names: str) -> list[str]:
    """``--preset A --preset B ...``"""
    return [x for name in names for x in ("--preset", name)]


def epoch_seconds(run_dir: Path) -> dict[str, list[float]]:
    """A run's training and evaluation seconds per epoch, from its ``metrics.jsonl``."""
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    evals = [r["timings"].get("eval", 0.0) for r in rows]
    return {"train_s": [r["seconds"] - e for r, e in zip(rows, evals)], "eval_s": evals}


def median_seconds(train: list[float], evals: list[float]) -> dict[str, float]:
    """Median training, evaluation and whole-epoch seconds of paired per-epoch lists."""
    return {"train_s": statistics.median(train), "eval_s": statistics.median(evals),
            "epoch_s": statistics.median(t + e for t, e in zip(train, evals))}


def shared_data() -> Path:
    env = os.environ.get("CML_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def published_dataset(name: str, valid: bool, workdir: Path | None = None) -> Path:
    """Preprocess the published split ``name`` (``retailrocket`` or ``ijcai15`` under the shared
    data; cached in ``workdir``) and return its path."""
    src = shared_data() / name
    if not src.is_dir():
        sys.exit(f"bench: {src} not found; set CML_SHARED_DATA to the folder holding {name}/")
    base = workdir or Path(tempfile.gettempdir()) / "cml-bench"
    out = base / (name if valid else f"{name}-novalid")
    if not (out / "meta.json").is_file():
        base.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "cml_dgl_cli", "preprocess", "cml-pickle", str(src), "-o", str(out),
               "--quiet", "--overwrite"] + ([] if valid else ["--no-valid"])
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=sys.stderr)
    return out


def retailrocket_dataset(valid: bool, workdir: Path | None = None) -> Path:
    """The published Retailrocket split (see :func:`published_dataset`)."""
    return published_dataset("retailrocket", valid, workdir)


def set_threads(n: int) -> int:
    """Use ``n`` threads in torch (the DGL backend follows torch's count) and in the subprocesses
    this process starts (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``); returns torch's count."""
    from cml_dgl.threads import set_threads as set_torch_threads

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    return set_torch_threads(n)


def add_threads_arg(ap) -> None:
    """``--threads N``: torch's CPU threads for this benchmark (and, through CML_THREADS, the
    commands it starts); default one per core."""
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: $CML_THREADS, else one per core); printed")


def apply_threads(n: int | None) -> int:
    """Set the benchmark's threads explicitly (``n``, else CML_THREADS, else torch's default: one
    per core, or OMP_NUM_THREADS) with :func:`set_threads`, export them to child processes as
    CML_THREADS too and print them on stderr; returns the count."""
    sys.path.insert(0, str(ROOT))
    import torch

    from cml_dgl.threads import ENV, threads_from_env

    used = set_threads(n or threads_from_env() or torch.get_num_threads())
    os.environ[ENV] = str(used)
    print(f"bench: {used} torch threads on {os.cpu_count()} cores (--threads / {ENV})", file=sys.stderr, flush=True)
    return used


def tmall_mbcgcn_dataset(holdouts: bool, workdir: Path | None = None, valid: bool = False) -> Path:
    """Preprocess MB-CGCN's Tmall split, with ``--no-valid`` (the published training split) unless
    ``valid``, with or without ``--auxiliary-holdouts`` (cached in ``workdir``); return its path."""
    src = shared_data() / "tmall-mbcgcn"
    if not src.is_dir():
        sys.exit(f"bench: {src} not found; set CML_SHARED_DATA to the folder holding tmall-mbcgcn/")
    base = workdir or Path(tempfile.gettempdir()) / "cml-bench"
    out = base / (("tmall-mbcgcn-holdouts" if holdouts else "tmall-mbcgcn") + ("-valid" if valid else ""))
    if not (out / "meta.json").is_file():
        base.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "cml_dgl_cli", "preprocess", "lists", str(src), "-o", str(out), "--quiet",
               "--overwrite", *([] if valid else ["--no-valid"]), *(["--auxiliary-holdouts"] if holdouts else [])]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=sys.stderr)
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def authors_step_strategy(dataset: Path, name: str, backend: str, overrides: list[str]):
    """(trainer, its strategy) of ``--preset authors-<name> --preset paper`` on a published
    split, one epoch on the CPU: the configuration the step benchmarks time."""
    from cml_dgl.data.dataset import load_dataset
    from cml_dgl.train import config
    from cml_dgl.train.trainer import Trainer

    cfg = config.resolve(presets=[AUTHORS_PRESET[name], "paper"],
                         overrides=["epochs=1", "device=cpu", "monitor=test", f"backend={backend}", *overrides])
    tr = Trainer(load_dataset(dataset), cfg, Path(tempfile.mkdtemp(prefix="cml-step-")) / "run", quiet=True)
    return tr, tr.strategy


def time_steps(strategy, n: int, clock, extra: int = 0):
    """One warm-up step, then ``n`` timed steps of ``strategy`` (the epoch's draws, reused where the
    epoch is shorter). Returns (seconds per timed step, the phases' Timer, the ``extra`` draws left)."""
    from cml_dgl.train.strategies import Timer

    need = 1 + n + extra
    steps = strategy.draws.cml_steps()
    steps = (steps * -(-need // len(steps)))[:need]
    sums: dict = {}
    strategy.step(steps[0], sums, Timer(clock))
    timer, per_step = Timer(clock), []
    for step in steps[1:1 + n]:
        t = clock()
        strategy.step(step, sums, timer)
        per_step.append(clock() - t)
    return per_step, timer, steps[1 + n:]
