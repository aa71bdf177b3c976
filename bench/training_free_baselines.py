"""The training-free baselines on real data: history, ItemKNN, CascadingRank and popularity.

    python bench/training_free_baselines.py [--only tmall,retailrocket] [--models a,b] [--workdir DIR] [--json]

Each figure is a plain `cml train DS -o RUN --model M --monitor test --epochs 0` (nothing is
trained or selected: the model is built from the training edges and scored once), then
`cml evaluate RUN --protocol both --json -k 10`; every command is printed with its figures.

Datasets (../shared/data, or $CML_SHARED_DATA):
  tmall              MB-CGCN's Tmall split, `cml preprocess lists ... --no-valid` (the published
                     training split); protocol of its papers: full ranking, training purchases masked
  tmall-holdouts     the same with --auxiliary-holdouts: MB-CGCN's per-behavior view/cart holdouts in
                     the training graphs, as in CascadingRank's copy, where the published figures come from
  retailrocket       the CML paper's split, `cml preprocess cml-pickle ... --no-valid` (its training split)
  retailrocket-valid the same with each test user's latest purchase carved out as validation (the
                     honest protocol's training data; the test split is the same)
Sampled = the positive among its 99 stored negatives; full = among all items, training purchases
(and, with a validation split, the validation item) masked. Ties: exact expectation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, retailrocket_dataset, tmall_mbcgcn_dataset  # noqa: E402

MODELS: dict[str, list[str]] = {
    "pop": ["--model", "pop"],
    "pop-target": ["--model", "pop-target"],
    "history (cart)": ["--model", "history", "--set", "history_behaviors=cart"],
    "history": ["--model", "history"],
    "itemknn": ["--model", "itemknn"],
    "cascading-rank": ["--model", "cascading-rank"],
}
PUBLISHED = {("tmall-holdouts", "history (cart)"): (0.1679, 0.0929),
             ("tmall-holdouts", "cascading-rank"): (0.3324, 0.1626)}


def dataset(name: str, workdir: Path) -> Path:
    if name.startswith("tmall"):
        return tmall_mbcgcn_dataset(holdouts=name == "tmall-holdouts", workdir=workdir)
    return retailrocket_dataset(valid=name == "retailrocket-valid", workdir=workdir)


def cml(*args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    res = subprocess.run([sys.executable, "-m", "cml_dgl_cli", *args], check=True, cwd=ROOT, env=env,
                         capture_output=True, text=True)
    return res.stdout


def measure(ds_name: str, model: str, workdir: Path) -> dict:
    ds = dataset(ds_name, workdir)
    run = workdir / "runs" / f"{ds_name}-{model.replace(' ', '').replace('(', '-').replace(')', '')}"
    train = ["train", str(ds), "-o", str(run), *MODELS[model], "--monitor", "test", "--epochs", "0",
             "--quiet", "--overwrite"]
    evaluate = ["evaluate", str(run), "--protocol", "both", "-k", "10", "--json"]
    cml(*train)
    results = {r["protocol"]: r["metrics"] for r in json.loads(cml(*evaluate))}
    return {"dataset": ds_name, "model": model, "commands": [" ".join(["cml", *train]), " ".join(["cml", *evaluate])],
            **{f"{p}_{m}": round(results[p][f"{m}@10"], 4) for p in ("sampled", "full") for m in ("hr", "ndcg")},
            "published_full": PUBLISHED.get((ds_name, model))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="tmall,tmall-holdouts,retailrocket,retailrocket-valid",
                    help="datasets, comma-separated")
    ap.add_argument("--models", default=",".join(MODELS), help="models, comma-separated (names as above)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cml-bench")
    ap.add_argument("--json", action="store_true", help="print one JSON object per figure instead of the table")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",")]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"bench: unknown model {unknown[0]!r}; expected one of {', '.join(MODELS)}")
    if not args.json:
        print("| dataset | model | sampled HR@10 | NDCG@10 | full HR@10 | NDCG@10 | published full |")
        print("|---|---|---|---|---|---|---|")
    commands = []
    for ds_name in [d.strip() for d in args.only.split(",")]:
        for model in models:
            row = measure(ds_name, model, args.workdir)
            commands += row["commands"]
            if args.json:
                print(json.dumps(row), flush=True)
                continue
            pub = row["published_full"]
            print(f"| {ds_name} | {model} | {row['sampled_hr']:.4f} | {row['sampled_ndcg']:.4f} | "
                  f"{row['full_hr']:.4f} | {row['full_ndcg']:.4f} | "
                  f"{f'{pub[0]:.4f} / {pub[1]:.4f}' if pub else ''} |", flush=True)
    if not args.json:
        print("\ncommands:")
        for c in commands:
            print(f"  {c}")


if __name__ == "__main__":
    main()
