"""The quality table: every registered model on the development benchmarks, three protocols,
sampled and full ranking, several seeds, tuned with the same trial budget.

    python bench/quality_table.py [--quick] [--datasets retailrocket,ijcai15,tmall-mbcgcn]
        [--models cml,mf,...] [--seeds 2023,2024,2025] [--trials 20] [--epochs N]
        [--out bench/out/quality] [--threads 1] [--write-results]

Per dataset, two dataset folders are built once: *honest* (each test user's latest training
purchase held out as validation, as the test split was made) and *paper* (the published training
split whole, `--no-valid`). Per model with a search space (every trainable one, and ItemKNN and CascadingRank among the
training-free), ``cml tune`` searches its registry space on the honest folder's validation split
(``--trials`` each, the same for every model; the test split is never read); its ``best.yaml`` is
the config of every run below. Popularity and history have nothing to tune.
Per model and seed:

  paper         ``cml train PAPER --monitor test``: the epoch is chosen on the test set (labelled so);
  honest        ``cml train HONEST --monitor valid``: chosen on validation, test read once;
  honest-refit  ``cml refit HONEST_RUN``: retrained on training + validation for the selected
                number of epochs, test read once.

Each run is evaluated with ``cml evaluate --protocol both --json`` (sampled 1+99 stored candidates
and full ranking over every item but the user's training purchases; ties by their exact
expectation), which also splits the test users into *seen* (test item among their own auxiliary
training items) and *new*. Everything is resumable: finished runs and evaluations under ``--out``
are kept and reused, so the table can be built over several sittings. ``--write-results`` puts the
Markdown table into docs/results.md between its ``quality-table`` marks; the JSON goes to
``OUT/table.json``. ``--quick`` is a smoke run of the whole pipeline (one seed, 2 trials,
3 epochs): its figures are not results.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import AUTHORS_PRESET, CML_PRESETS, ROOT, preset_args, shared_data  # noqa: E402

DATASETS = {"retailrocket": "cml-pickle", "ijcai15": "cml-pickle", "tmall-mbcgcn": "lists"}  # name: preprocess source
#: the ranking every model's epochs and trials are chosen on, where not the stored 1+99 candidates:
#: the protocol the dataset's papers report (the same for every model of a dataset)
SELECTION = {"tmall-mbcgcn": "full"}
#: reference rows beside the registry's models, untuned: CML with the authors' hyperparameters and
#: the paper's equations (the default before issue 13) or the authors' code (--preset official)
REFERENCES = {"cml@paper": "paper", "cml@official": "official"}
PROTOCOLS = ("paper", "honest", "honest-refit")
RESULTS_MD = ROOT / "docs" / "results.md"
BEGIN, END = "<!-- quality-table:begin -->", "<!-- quality-table:end -->"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, Path(args.out).resolve()
        self.env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                        CML_THREADS=str(args.threads))
        self.log: list[dict] = []
        self.tuned_once: set[tuple[str, str]] = set()

    def cml(self, *argv: str | Path) -> str:
        cmd = [sys.executable, "-m", "cml_dgl_cli", *map(str, argv)]
        t = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True)
        self.log.append({"cmd": shlex.join(["cml", *map(str, argv)]), "seconds": round(time.perf_counter() - t, 1),
                         "rc": res.returncode})
        if res.returncode != 0:
            raise RuntimeError(f"{shlex.join(['cml', *map(str, argv)])}: exit {res.returncode}: {res.stderr.strip()[-500:]}")
        return res.stdout

    # ------------------------------------------------------------------ stages
    def dataset(self, name: str, protocol: str) -> Path:
        out = self.out / "data" / f"{name}-{'paper' if protocol == 'paper' else 'honest'}"
        if not (out / "meta.json").is_file():  # the shared-data folder is named as the benchmark
            self.cml("preprocess", DATASETS[name], shared_data() / name, "-o", out, "--quiet",
                     *(["--no-valid"] if protocol == "paper" else []))
        return out

    def base_layers(self, name: str, model: str) -> list[str]:
        if model in REFERENCES:
            layers = ["--model", "cml", *preset_args(AUTHORS_PRESET[name], REFERENCES[model])]
        else:
            layers = preset_args(*CML_PRESETS[name]) if model == "cml" else []
        if name in SELECTION:
            layers += ["--set", f"monitor_protocol={SELECTION[name]}"]
        if self.args.epochs:
            layers += ["--set", f"epochs={self.args.epochs}"]
        return layers

    def tuned(self, name: str, model: str) -> list[str]:
        """The config layers of every run of ``model``: its tuned best.yaml, else the base layers."""
        from cml_dgl.models import registry

        if model in REFERENCES:
            return self.base_layers(name, model)
        spec = registry.spec(model)
        if not spec.search_space or self.args.trials == 0:
            return self.base_layers(name, model) + ["--model", model]
        out = self.out / "tune" / name / model
        best = out / "best.yaml"
        if (name, model) not in self.tuned_once:
            # even when the study looks finished: cml tune refuses one made with another space,
            # dataset or base config (a finished study of an older space is never reused unseen)
            self.cml("tune", self.dataset(name, "honest"), "--model", model, "--trials", self.args.trials,
                     "-o", out, "--seed", 2023, *self.base_layers(name, model), "--quiet")
            self.tuned_once.add((name, model))
        return ["--config", best] + (["--set", f"epochs={self.args.epochs}"] if self.args.epochs else [])

    def run(self, name: str, model: str, protocol: str, seed: int) -> dict:
        """One row: train (or refit) and evaluate, reused when already done."""
        rd = self.out / "runs" / name / model / f"{protocol}-{seed}"
        result = rd.with_suffix(".eval.json")
        if result.is_file():
            return json.loads(result.read_text())
        layers = self.tuned(name, model)
        if not (rd / "summary.json").is_file():
            if protocol == "honest-refit":
                self.run(name, model, "honest", seed)
                self.cml("refit", rd.parent / f"honest-{seed}", "-o", rd, "--overwrite", "--quiet")
            else:
                monitor = "test" if protocol == "paper" else "valid"
                self.cml("train", self.dataset(name, protocol), "-o", rd, *layers, "--seed", seed,
                         "--monitor", monitor, "--overwrite", "--quiet")
        evals = json.loads(self.cml("evaluate", rd, "--protocol", "both", "-k", "10", "--json", "--quiet"))
        summary = json.loads((rd / "summary.json").read_text())
        row = {"dataset": name, "model": model, "protocol": protocol, "seed": seed,
               "best_epoch": summary.get("best_epoch"), "epochs_run": summary.get("epochs_run"),
               "test_selected": protocol == "paper", "evaluations": evals,
               "command": next((e["cmd"] for e in reversed(self.log) if str(rd) in e["cmd"]), None)}
        result.write_text(json.dumps(row, indent=1, sort_keys=True))
        return row


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown(rows: list[dict], seeds: list[int]) -> str:
    lines = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        lines += [f"**{name}** ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}: {', '.join(map(str, seeds))}; "
                  "HR@10 / NDCG@10; full ranking masks the user's training purchases)", "",
                  "| model | protocol | sampled HR@10 | sampled NDCG@10 | full HR@10 | full NDCG@10 | "
                  "full NDCG@10 seen / new (users) |", "|---|---|---|---|---|---|---|"]
        for model in dict.fromkeys(r["model"] for r in rows if r["dataset"] == name):
            for protocol in PROTOCOLS:
                group = [r for r in rows if (r["dataset"], r["model"], r["protocol"]) == (name, model, protocol)]
                if not group:
                    continue
                ev = {p: [next(e for e in r["evaluations"] if e["protocol"] == p) for r in group]
                      for p in ("sampled", "full")}
                cell = [_mean_sd([e["metrics"][m] for e in ev[p]]) for p in ("sampled", "full")
                        for m in ("hr@10", "ndcg@10")]
                g = ev["full"][0].get("groups", {})
                seen, new = (_mean_sd([e["groups"][k]["metrics"]["ndcg@10"] for e in ev["full"]
                                       if e.get("groups", {}).get(k, {}).get("metrics")])  # null: no such user
                             for k in ("seen", "new"))
                users = f"{g.get('seen', {}).get('n_users', '-')} / {g.get('new', {}).get('n_users', '-')}"
                label = protocol + (" (test-selected)" if protocol == "paper" else "")
                lines.append(f"| `{model}` | {label} | " + " | ".join(cell) + f" | {seen} / {new} ({users}) |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--models", default=None, help="comma-separated; default: every registered model and the "
                    f"reference rows {', '.join(REFERENCES)}")
    ap.add_argument("--seeds", default="2023,2024,2025")
    ap.add_argument("--trials", type=int, default=20, help="tuning trials per trainable model (0: no tuning)")
    ap.add_argument("--epochs", type=int, default=None, help="cap every run's epochs (default: the config's)")
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads of every run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "quality"))
    ap.add_argument("--quick", action="store_true", help="one seed, 2 trials, 3 epochs: a smoke run")
    ap.add_argument("--write-results", action="store_true", help="put the table into docs/results.md")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.trials, args.epochs = args.seeds.split(",")[0], 2, args.epochs or 3
        args.out = args.out if args.out != str(ROOT / "bench" / "out" / "quality") else args.out + "-quick"
    from cml_dgl.models import registry

    models = args.models.split(",") if args.models else [*registry.MODELS, *REFERENCES]
    seeds = [int(s) for s in args.seeds.split(",")]
    bench = Bench(args)
    t0 = time.perf_counter()
    print(f"quality table: threads {args.threads}, seeds {seeds}, trials {args.trials}, epochs "
          f"{args.epochs or 'config'}, out {bench.out}", flush=True)
    rows = []
    for name in args.datasets.split(","):
        for model in models:
            for protocol in PROTOCOLS:
                for seed in seeds:
                    t = time.perf_counter()
                    try:
                        row = bench.run(name, model, protocol, seed)
                    except RuntimeError as e:
                        print(f"  {name} {model} {protocol} seed {seed}: FAILED {e}", flush=True)
                        continue
                    rows.append(row)
                    full = next(e for e in row["evaluations"] if e["protocol"] == "full")["metrics"]
                    print(f"  {name} {model} {protocol} seed {seed}: full HR@10 {full['hr@10']:.4f} "
                          f"NDCG@10 {full['ndcg@10']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    table = markdown(rows, seeds)
    bench.out.mkdir(parents=True, exist_ok=True)
    (bench.out / "table.json").write_text(json.dumps({"rows": rows, "commands": bench.log,
                                                      "seconds": round(time.perf_counter() - t0, 1),
                                                      "threads": args.threads}, indent=1, sort_keys=True))
    print(table)
    print(f"total {time.perf_counter() - t0:.0f} s (commands run this sitting: {len(bench.log)})")
    if args.write_results:
        text = RESULTS_MD.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        RESULTS_MD.write_text(head + BEGIN + "\n" + table + "\n" + END + tail)


if __name__ == "__main__":
    main()
