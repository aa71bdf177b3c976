"""Seconds per Retailrocket training epoch by torch thread count, alone and next to busy processes.

    python bench/threads_contention.py [--threads 2,1] [--busy 0,1] [--epochs 2] [--json]

torch's OpenMP threads wait for each other at the end of every parallel operation, so a thread
that shares its core with another busy process holds all of them up. For every thread count and
number of busy competitors (``python -c 'while True: pass'`` processes, started before and
stopped after the timing) this trains the published Retailrocket split with its preset
(``train_speed.time_training``: median epoch after the first) and prints the seconds per epoch and
the slowdown against the same thread count alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import apply_threads, retailrocket_dataset  # noqa: E402
from bench.train_speed import time_training  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="2,1", help="thread counts to time, comma-separated")
    ap.add_argument("--busy", default="0,1", help="numbers of busy competitor processes, comma-separated")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from cml_dgl.data.dataset import load_dataset

    ds = load_dataset(retailrocket_dataset(valid=True, workdir=args.workdir))
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        apply_threads(threads)
        for busy in (int(b) for b in args.busy.split(",")):
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
            try:
                with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
                    r = time_training(ds, ["retailrocket"], ["backend=auto", "device=cpu"], args.epochs,
                                      Path(tmp) / "run")
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
            rows.append({"threads": threads, "busy": busy, "seconds_per_epoch": r["seconds_per_epoch"]})
            print(f"threads {threads}, busy processes {busy}: {r['seconds_per_epoch']:.2f} s per epoch",
                  file=sys.stderr, flush=True)
    alone = {r["threads"]: r["seconds_per_epoch"] for r in rows if r["busy"] == 0}
    for r in rows:
        r["slowdown"] = r["seconds_per_epoch"] / alone[r["threads"]] if r["threads"] in alone else None
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return
    for r in rows:
        slow = f" ({r['slowdown']:.1f}x alone)" if r["slowdown"] is not None else ""
        print(f"threads {r['threads']}  busy {r['busy']}  {r['seconds_per_epoch']:6.2f} s per epoch{slow}")


if __name__ == "__main__":
    main()
