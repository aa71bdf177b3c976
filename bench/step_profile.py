"""CPU seconds of one CML training step on a published benchmark, split into the three phases,
with an optional operator profile.

    python bench/step_profile.py [--dataset ijcai15] [--backend torch] [--threads 1] [--steps 6]
                                 [--profile 30] [--json]

Builds the trainer of ``--preset authors-<dataset> --preset paper``, the configuration the authors'
code runs (IJCAI-15: batch 8192, 17 steps an epoch; the published
split without a validation carve-out, as the authors train), draws one epoch, runs one warm-up step,
then times ``--steps`` steps with ``time.process_time`` (CPU time of this process: on a shared
machine it is far steadier than wall time, though cache and memory contention still move it).
``--profile N`` then profiles two more steps with ``torch.profiler`` and prints the N operators
with the most self CPU time, grouped by input shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import authors_step_strategy, published_dataset, set_threads, time_steps  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ijcai15", choices=["ijcai15", "retailrocket"])
    ap.add_argument("--backend", default="auto", choices=["auto", "dgl", "torch"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N operators")
    ap.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                    help="cpu: time.process_time (steady on a shared machine); wall: time.perf_counter "
                         "(what a user waits; with several threads it also counts threads waiting on each other)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.steps < 1 or args.threads < 1:
        sys.exit("--steps and --threads must be >= 1")
    threads = set_threads(args.threads)
    import torch

    tr, strategy = authors_step_strategy(published_dataset(args.dataset, valid=False), args.dataset, args.backend,
                                         args.set)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    per_step, timer, rest = time_steps(strategy, args.steps, clock, extra=2 if args.profile else 0)
    res = {"dataset": args.dataset, "backend": strategy.model.propagator.backend, "threads": threads,
           "batch_size": tr.cfg["batch_size"], "steps_per_epoch": tr.steps_per_epoch(), "steps_timed": args.steps,
           "clock": args.clock, "s_per_step_median": statistics.median(per_step), "s_per_step_min": min(per_step),
           "s_per_phase_mean": {k: v / args.steps for k, v in timer.seconds.items()},
           "overrides": args.set, "torch": torch.__version__}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        from cml_dgl.train.strategies import Timer

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for step in rest:
                strategy.step(step, {}, Timer())
        table = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=args.profile, max_name_column_width=40,
            max_shapes_column_width=60)
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        phases = ", ".join(f"{k} {v:.4f}" for k, v in res["s_per_phase_mean"].items())
        print(f"{args.dataset} ({res['backend']}, {threads} threads): {res['s_per_step_median']:.4f} {args.clock} s/step "
              f"(median of {args.steps}; min {res['s_per_step_min']:.4f}) [{phases}]")
    if args.profile:
        print(table, file=sys.stderr if args.json else sys.stdout)


if __name__ == "__main__":
    main()
