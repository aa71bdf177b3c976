"""How many CPU threads torch computes with: ``--threads N``, else ``CML_THREADS``, else torch's
default (one per core).

torch's OpenMP threads wait for each other at the end of every parallel operation, so another busy
process on one core stalls them all: on the shared 2-core dev machine a Retailrocket epoch took
6.5 s with 2 threads and 0.53 s with 1 (``bench/threads_contention.py``, docs/results.md). On a
machine that is not yours alone use fewer threads than cores (``--threads 1``).
"""

from __future__ import annotations

import os

from cml_dgl.errors import CmlError

ENV = "CML_THREADS"
MAX_THREADS = 1024


def threads_from_env() -> int | None:
    """``CML_THREADS`` as a thread count, None when unset or empty; CmlError when malformed."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise CmlError(f"environment variable {ENV}={raw[:40]!r}: expected a thread count in [1, {MAX_THREADS}]")
    return n


def set_threads(n: int | None = None) -> int:
    """Use ``n`` intra-op threads in torch (None: ``CML_THREADS``, else leave torch's default) and
    return the number now in use."""
    import torch

    if n is None:
        n = threads_from_env()
    if n is not None:
        if not 1 <= n <= MAX_THREADS:
            raise CmlError(f"--threads {n}: expected a thread count in [1, {MAX_THREADS}]")
        torch.set_num_threads(n)
    return torch.get_num_threads()
