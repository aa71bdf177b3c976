"""Data-parallel training (torch.distributed, Gloo on the CPU): one step on 2 processes gives the
parameters and gradients of one process on the same global batch; only rank 0 writes and prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cml_dgl.data.dataset import load_dataset, write_dataset
from cml_dgl.train import config
from cml_dgl.train.checkpoint import load_checkpoint
from cml_dgl.train.distributed import DistContext, init_from_env
from cml_dgl.train.trainer import Trainer
from conftest import make_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
ONE_STEP = ["batch_size=1024", "meta_batch=8", "meta_samples=4", "epochs=1", "backend=torch", "device=cpu"]
#: one draw per purchase for the host stream's meta-network cases: with every auxiliary edge in the
#: step (the default) the meta network's gradients are near-cancelling sums (largest 5e-6) whose
#: rounding, which the shards change, AdamW's normalised first steps carry to the weights (1.2e-5
#: measured, the gradients agreeing to 1e-9); the edge pass is checked without it and on the device
PER_PURCHASE = ["aux_draws=target"]
CASES = {
    "cml": ONE_STEP + PER_PURCHASE,
    # phase 3 with the meta network in train mode: its dropout and BatchNorm must match across ranks
    "cml-train-mode-weights": ONE_STEP + PER_PURCHASE + ["meta_eval_weights=false", "cl_variant=official"],
    # every auxiliary edge in the step (aux_draws: edges), its rows sharded like the purchases'
    "cml-edges-no-meta": ONE_STEP + ["variant=no-meta"],
    "mf": ONE_STEP + ["model=mf"],
    "lightgcn": ONE_STEP + ["model=lightgcn"],
    # the device sampler: every rank's torch generator draws the same global samples
    "cml-device-sampler": ONE_STEP + ["sampler=device"],
    "mf-device-sampler": ONE_STEP + ["model=mf", "sampler=device"],
}


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist") / "ds"
    write_dataset(make_tiny_dataset(n_users=40, n_items=60, seed=3), d)
    return d


def _one_step(ds_dir: Path, run_dir: Path, overrides: list[str], ctx: DistContext) -> dict:
    """Train one epoch of exactly one step; return parameters and their final gradients."""
    tr = Trainer(load_dataset(ds_dir), config.resolve(overrides=overrides), run_dir, quiet=True, dist=ctx)
    tr.prepare_run_dir(overwrite=True)
    assert tr.steps_per_epoch() == 1
    tr.fit()
    out = {}
    for name, module in (("model", tr.model), ("meta", tr.strategy.meta)):
        if module is None:
            continue
        out[name] = {k: p.detach().clone() for k, p in module.named_parameters()}
        out[name + "_grad"] = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
    return out


def _worker(rank: int, store: str, ds_dir: Path, work: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        ctx = DistContext(rank=rank, world=WORLD, local_rank=rank, device=torch.device("cpu"))
        res = {name: _one_step(ds_dir, work / f"dist-{name}", sets, ctx) for name, sets in CASES.items()}
        torch.save(res, work / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def dist_results(ds_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("dist-work")
    mp.spawn(_worker, args=(str(work / "store"), ds_dir, work), nprocs=WORLD, join=True)
    ranks = [torch.load(work / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = {name: _one_step(ds_dir, work / f"single-{name}", sets, DistContext())
              for name, sets in CASES.items()}
    return work, ranks, single


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("case", list(CASES))
def test_one_step_equals_single_process(dist_results, case):
    _, ranks, single = dist_results
    ref = single[case]
    for key in ref:
        # every rank holds the same parameters and gradients (they apply the same summed gradient)
        assert _max_diff(ranks[0][case][key], ranks[1][case][key]) == 0.0, key
        assert _max_diff(ranks[0][case][key], ref[key]) < 1e-5, key
    for key in [k for k in ref if k.endswith("_grad")]:
        # gradients of the global batch, not of a rank's half (a mean over ranks would be half as large)
        scale = max(float(g.abs().max()) for g in ref[key].values())
        assert scale > 0, key
        assert _max_diff(ranks[0][case][key], ref[key]) < 1e-4 * scale, (key, scale)


def test_only_rank_zero_writes_the_run(dist_results):
    work, _, _ = dist_results
    rd = work / "dist-cml"
    rows = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1], "one metrics line, not one per rank"
    for name in ("config.yaml", "run.json", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (rd / name).is_file(), name


def test_shard_sum_partitions_rows():
    x = torch.arange(7.0)
    parts = [DistContext(rank=r, world=3).shard_sum(x) for r in range(3)]
    assert [float(p) for p in parts] == [0 + 3 + 6, 1 + 4, 2 + 5]
    assert float(DistContext().shard_sum(x)) == float(x.sum())


def test_init_from_env_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not init_from_env("cpu").enabled
    monkeypatch.setenv("WORLD_SIZE", "two")
    from cml_dgl.errors import CmlError

    with pytest.raises(CmlError, match="WORLD_SIZE"):
        init_from_env("cpu")


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed next to this Python")
def test_torchrun_cli_two_processes(ds_dir, tmp_path):
    """`torchrun --nproc_per_node 2 -m cml_dgl_cli train`: rank 0 alone prints and writes; the result is that
    of one process."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    args = ["train", str(ds_dir), "--backend", "torch", "--device", "cpu", "--epochs", "2"]
    args += [a for s in ONE_STEP[:3] for a in ("--set", s)]
    logs = tmp_path / "logs"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", str(WORLD), "--redirects", "3",
                           "--log_dir", str(logs), "-m", "cml_dgl_cli", *args, "-o", str(tmp_path / "dist")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {r: (next(logs.rglob(f"attempt_0/{r}/stdout.log")).read_text(),
               next(logs.rglob(f"attempt_0/{r}/stderr.log")).read_text()) for r in range(WORLD)}
    assert out[1] == ("", ""), f"rank 1 printed: {out[1]}"
    assert "epoch 1/2" in out[0][1], "rank 0 shows the progress bar"
    lines = [json.loads(x) for x in out[0][0].splitlines()]
    assert [r.get("epoch") for r in lines[:2]] == [1, 2] and lines[2]["run_dir"] == str(tmp_path / "dist")

    single = subprocess.run([sys.executable, "-m", "cml_dgl_cli", *args, "--quiet", "-o", str(tmp_path / "one")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    rows = {name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("dist", "one")}
    for a, b in zip(rows["dist"], rows["one"], strict=True):
        for key in b["losses"]:
            assert abs(a["losses"][key] - b["losses"][key]) < 1e-5, key
    sa, _ = load_checkpoint(tmp_path / "dist" / "checkpoints" / "last.pt")
    sb, _ = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    assert _max_diff(sa["model"], sb["model"]) < 1e-5
