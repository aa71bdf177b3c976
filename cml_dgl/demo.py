"""The embedded demo: synthetic raw log -> preprocess -> train CML and baselines -> evaluate,
export and report, all in one directory. Used by ``cml demo`` and ``make demo``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cml_dgl.data.dataset import load_dataset
from cml_dgl.data.preprocess import preprocess
from cml_dgl.data.synth import SynthConfig, generate_events, write_raw_log
from cml_dgl.eval.evaluate import evaluate
from cml_dgl.fsutil import atomic_write_json
from cml_dgl.outputs import check_output, write_mark
from cml_dgl.export import export_embeddings, meta_contrastive_weights
from cml_dgl.report import write_report
from cml_dgl.runs import load_run
from cml_dgl.train import config as config_mod
from cml_dgl.train.trainer import Trainer

# MF: the same epochs and batches as CML; 4-5x the demo preset's rates, a lighter L2 (its best here).
MF_OVERRIDES = ["dim=32", "reg=0.0001", "opt_base_lr=0.005", "opt_max_lr=0.02"]
#: the demo's runs, each over the demo preset: name -> (presets after it, --set items)
RUNS: dict[str, tuple[list[str], list[str]]] = {
    "cml": ([], ["model=cml"]),                              # the default CML
    "cml-paper": (["paper"], ["model=cml", "dim=16"]),       # the paper's equations, its d = 16
    "mf": ([], ["model=mf", *MF_OVERRIDES]),
    "pop": ([], ["model=pop"]),
}
MODELS = tuple(RUNS)


@dataclass
class DemoSize:
    n_users: int = 2500
    n_items: int = 3000
    epochs: int = 30


def run_demo(out: str | Path, size: DemoSize = DemoSize(), seed: int = 2023, overwrite: bool = False,
             quiet: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole pipeline on a generated Taobao-format log; return the summary it prints."""
    out = check_output(out, "demo", overwrite=overwrite, what="--out")
    out.mkdir(parents=True, exist_ok=True)
    write_mark(out, "demo")
    t0 = time.perf_counter()
    raw = out / "UserBehavior.csv"
    events = generate_events(SynthConfig(n_users=size.n_users, n_items=size.n_items, seed=seed))
    write_raw_log(events, raw, "taobao")
    log(f"[1/5] wrote a synthetic Taobao log: {len(events):,} events -> {raw}")
    ds_dir = preprocess("taobao", raw, out / "dataset", seed=seed, overwrite=True, quiet=True)
    ds = load_dataset(ds_dir)
    info = ds.info()
    log(f"[2/5] preprocessed: {info['n_users']:,} users, {info['n_items']:,} items, "
        f"train edges {info['train_edges']} -> {ds_dir}")
    results: dict[str, Any] = {}
    runs = {}
    log("      test figures: the honest protocol (epoch chosen on validation, test read once); sampled = "
        "the stored 1+99 candidates, full = every item")
    for model, (presets, sets) in RUNS.items():
        cfg = config_mod.resolve(presets=["demo", *presets], overrides=[
            *sets, f"seed={seed}", f"epochs={size.epochs}", "device=cpu"])
        run_dir = out / f"run-{model}"
        trainer = Trainer(ds, cfg, run_dir, quiet=True)
        trainer.prepare_run_dir(overwrite=True)
        t = time.perf_counter()
        trainer.fit()
        run = load_run(run_dir, "best", dataset=ds)
        runs[model] = run
        res = evaluate(ds, run.scorer(), split="test", protocol="both", ks=(10,), seed=seed)
        results[model] = {"run_dir": str(run_dir), "train_seconds": round(time.perf_counter() - t, 1),
                          "best_epoch": run.info.get("epoch"),
                          **{r["protocol"]: r["metrics"] for r in res}}
        r = results[model]
        log(f"[3/5] trained {model:<9} in {r['train_seconds']:>5.1f} s: test HR@10 / NDCG@10 sampled "
            f"{r['sampled']['hr@10']:.4f} / {r['sampled']['ndcg@10']:.4f}, full {r['full']['hr@10']:.4f} / "
            f"{r['full']['ndcg@10']:.4f}")
    cml_run = runs["cml"]
    manifest = export_embeddings(cml_run, out / "embeddings", overwrite=True)
    log(f"[4/5] exported {', '.join(manifest['tables'])} -> {out / 'embeddings'}")
    figures = write_report(out / "run-cml", meta_weights=meta_contrastive_weights(cml_run, seed=seed),
                           user_ids=ds.user_ids)
    log(f"[5/5] report -> {figures['report']}")
    summary = {"out": str(out), "seconds": round(time.perf_counter() - t0, 1), "dataset": info,
               "test": results, "figures": {k: str(v) for k, v in figures.items()},
               "embeddings": str(out / "embeddings")}
    atomic_write_json(out / "summary.json", summary)
    return summary
