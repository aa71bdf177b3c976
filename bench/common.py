"""Shared helpers for the benchmark scripts (not a test module)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def set_threads(n: int) -> dict[str, int]:
    """Use ``n`` threads in torch, in DGL's own OpenMP runtime (when DGL imports) and in the
    subprocesses this process starts; returns what each reports."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    out = {"torch": torch.get_num_threads()}
    try:
        from cml_dgl.graph.build import import_dgl

        dgl = import_dgl()
        dgl.utils.set_num_threads(n)
        out["dgl"] = int(dgl.utils.get_num_threads())
    except Exception:  # noqa: BLE001  (no DGL: nothing to set)
        pass
    return out


def add_threads_arg(ap) -> None:
    """``--threads N``: torch's CPU threads for this benchmark (and, through CML_THREADS, the
    commands it starts); default one per core."""
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: $CML_THREADS, else one per core); printed")


def apply_threads(n: int | None) -> int:
    """Set the benchmark's threads explicitly (``n``, else CML_THREADS, else torch's default: one
    per core, or OMP_NUM_THREADS), export them to child processes as CML_THREADS and print them on
    stderr; returns the count."""
    sys.path.insert(0, str(ROOT))
    import torch

    from cml_dgl.threads import ENV, set_threads, threads_from_env

    used = set_threads(n or threads_from_env() or torch.get_num_threads())
    os.environ[ENV] = str(used)
    print(f"bench: {used} torch threads on {os.cpu_count()} cores (--threads / {ENV})", file=sys.stderr, flush=True)
    return used


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
