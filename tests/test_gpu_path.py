"""The GPU training path, checked on the CPU: device selection, one host-to-device copy and one host
sync per epoch, a GPU-trained run evaluated and exported on a CPU machine, and the training stack
of the GPU image (no DGL, no scipy). Tests that need CUDA run only where torch sees a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch.utils._python_dispatch import TorchDispatchMode

from cml_dgl_cli.main import cli
from cml_dgl.data.dataset import load_dataset, write_dataset
from cml_dgl.errors import CmlError
from cml_dgl.train import config
from cml_dgl.train.draws import host as smp
from cml_dgl.train.checkpoint import load_checkpoint, save_checkpoint
from cml_dgl.train.devices import resolve_device
from cml_dgl.train.trainer import Trainer
from conftest import make_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "batch_size=32", "--set", "meta_batch=8", "--set", "meta_samples=4", "--quiet"]
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu") / "ds"
    write_dataset(make_tiny_dataset(n_users=40, n_items=60, seed=3), d)
    return d


def invoke(*args, expect=0):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == expect, res.output
    return res


def _trainer(ds_dir, tmp_path, *sets: str) -> Trainer:
    cfg = config.resolve(overrides=["backend=torch", "device=cpu", "batch_size=32", "meta_batch=8",
                                    "meta_samples=4", *sets])
    return Trainer(load_dataset(ds_dir), cfg, tmp_path / "run", quiet=True)


# ---------------------------------------------------------------- device and backend selection
def test_device_auto_picks_cuda_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(CmlError, match="torch sees no GPU here"):
        resolve_device("cuda")


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_dgl_backend_on_cuda_is_a_clear_error(ds_dir, tmp_path, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # refused before anything touches CUDA
    res = invoke("train", ds_dir, "-o", tmp_path / "r", "--device", device, "--backend", "dgl", *FAST, expect=2)
    assert "backend 'dgl' runs on the CPU only" in res.output and "use backend 'torch'" in res.output
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- device batching
def test_index_pack_moves_once_and_returns_views():
    pack = smp.IndexPack()
    arrays = [np.arange(5), np.zeros(0, dtype=np.int32), np.array([7, -1, 3])]
    handles = [pack.add(a) for a in arrays]
    tri = pack.add_triples(smp.Triples(np.array([1, 2]), np.array([3, 4]), np.array([5, 6])))
    dev = pack.to(torch.device("cpu"))
    for h, a in zip(handles, arrays):
        got = dev.get(h)
        assert got.dtype == torch.int64 and got.tolist() == a.tolist()
        assert got.numel() == 0 or got.data_ptr() >= dev.flat.data_ptr(), "a view of the one flat tensor"
    t = dev.triples(tri)
    assert len(t) == 2 and (t.users.tolist(), t.pos.tolist(), t.neg.tolist()) == ([1, 2], [3, 4], [5, 6])
    assert dev.flat.numel() == 5 + 0 + 3 + 6


def test_epoch_draws_equal_step_by_step_draws(ds_dir, tmp_path):
    """Drawing the whole epoch up front consumes the generator exactly as the per-step loop did."""
    tr = _trainer(ds_dir, tmp_path, "meta_cl_all_users=false")
    draws = tr.strategy.draws
    assert isinstance(draws, smp.HostDraws), "the CPU default is the host (numpy) stream"
    state = draws.rng.bit_generator.state
    steps = draws.cml_steps()
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    samples = smp.cml_epoch_samples(tr.ds, draws.index, rng, aux_draws=tr.cfg["aux_draws"])
    pointer = smp.MetaPointer(tr.strategy.meta_pointer.users, tr.cfg["meta_batch"])
    B, ratio, K = tr.cfg["batch_size"], tr.cfg["cl_sample_ratio"], tr.ds.n_behaviors
    assert len(steps) == -(-len(samples) // B) > 1
    for j, step in enumerate(steps):
        start = j * B
        users = samples.users[start:start + B]
        for got, want in zip(step.triples, samples.batch(start, start + B), strict=True):
            assert got.users.tolist() == want.users.tolist() and got.neg.tolist() == want.neg.tolist()
        assert step.cl_clone.tolist() == smp.contrast_sample(users, ratio, rng).tolist()
        assert step.cl_main.tolist() == smp.contrast_sample(users, ratio, rng).tolist()
        meta_users = pointer.next()
        for k, got in enumerate(step.meta_triples):
            want = smp.meta_triples(meta_users, draws.index[k], tr.cfg["meta_samples"], rng)
            assert got.pos.tolist() == want.pos.tolist() and got.neg.tolist() == want.neg.tolist()
        assert len(step.meta_triples) == K
        assert step.cl_meta.tolist() == smp.contrast_sample(meta_users, ratio, rng).tolist()
    assert draws.rng.bit_generator.state == rng.bit_generator.state


@pytest.mark.parametrize("model", ["cml", "mf"])
def test_one_transfer_and_one_host_sync_per_epoch(ds_dir, tmp_path, monkeypatch, model):
    tr = _trainer(ds_dir, tmp_path, f"model={model}")
    calls = {"to": 0, "tolist": 0, "float": 0}
    real_to, real_tolist, real_float = smp.IndexPack.to, torch.Tensor.tolist, torch.Tensor.__float__

    def counted(name, fn):
        def wrapper(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapper

    monkeypatch.setattr(smp.IndexPack, "to", counted("to", real_to))
    monkeypatch.setattr(torch.Tensor, "tolist", counted("tolist", real_tolist))
    monkeypatch.setattr(torch.Tensor, "__float__", counted("float", real_float))
    from tqdm import tqdm

    with tqdm(disable=True) as bar:
        losses = tr.strategy.run_epoch(1, lambda: bar.update(1), tr.timer)
    assert tr.steps_per_epoch() > 1
    assert calls == {"to": 1, "tolist": 1, "float": 0}, calls
    assert losses and all(np.isfinite(v) for v in losses.values())


class SyncProbe(TorchDispatchMode):
    """Records the aten calls that make the host wait for a CUDA device: reading a value
    (``.item()``, ``bool``), data-dependent output shapes (``nonzero``, boolean indexing, ``unique``,
    ``masked_select``, ``bincount``, ``repeat_interleave`` without ``output_size``), ``equal``.
    The optimisers' step counters are host tensors on CUDA too (torch's default), so their
    ``.item()`` inside ``torch/optim`` is not a device sync and is not recorded."""

    SYNC = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
            "is_nonzero", "equal", "bincount"}

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[1]
        sync = name in self.SYNC
        if name in ("index", "index_put", "index_put_"):
            sync = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []))
        if name == "repeat_interleave":  # repeat_interleave.Tensor(repeats, *, output_size)
            sync = kwargs.get("output_size") is None
        if sync and not (name == "_local_scalar_dense" and
                         any("torch/optim/" in f.filename for f in traceback.extract_stack())):
            self.syncs.append(name)
        return func(*args, **kwargs)


@pytest.mark.parametrize("sampler", ["host", "device"])
@pytest.mark.parametrize("sets", [(), ("cl_variant=official", "cl_chunk=4"), ("variant=no-meta",),
                                  ("meta_cl_all_users=false", "meta_bpr_per_behavior=false"),
                                  ("activation=sigmoid", "norm=none")])
def test_a_training_step_never_waits_for_the_device(ds_dir, tmp_path, sampler, sets):
    tr = _trainer(ds_dir, tmp_path, f"sampler={sampler}", *sets)
    steps = tr.strategy.draws.cml_steps()
    sums: dict = {}
    for step in steps[:2]:
        with SyncProbe() as probe:
            tr.strategy.step(step, sums, tr.timer)
        assert probe.syncs == [], probe.syncs
    assert set(sums) >= {"total", "bpr", "reg"}


def test_the_probe_sees_syncs():
    x = torch.arange(6)
    with SyncProbe() as probe:
        x[x > 2]
        x.sum().item()
        torch.unique(x)
        torch.repeat_interleave(x, x)
        torch.repeat_interleave(x, x, output_size=15)
    assert probe.syncs == ["index", "_local_scalar_dense", "_unique2", "repeat_interleave"]


def test_device_sampling_syncs_per_epoch_not_per_step(ds_dir, tmp_path):
    counts = {}
    for B in (2, 64):
        tr = _trainer(ds_dir, tmp_path, "sampler=device", f"batch_size={B}")
        with SyncProbe() as probe:
            steps = tr.strategy.draws.cml_steps()
        counts[B] = (len(probe.syncs), len(steps))
    (many, n_many), (few, n_few) = counts[2], counts[64]
    assert n_many >= 8 * n_few and n_many > 100
    assert many <= 2 * few + 10 and many < n_many / 3, counts


@pytest.mark.parametrize("sampler", ["host", "device"])
def test_a_baseline_epoch_syncs_only_to_draw(ds_dir, tmp_path, sampler):
    from tqdm import tqdm

    tr = _trainer(ds_dir, tmp_path, "model=mf", f"sampler={sampler}")
    triples = tr.strategy.draws.pair_triples()
    tr.strategy.draws.pair_triples = lambda: triples
    with SyncProbe() as probe, tqdm(disable=True) as bar:
        tr.strategy.run_epoch(1, lambda: bar.update(1), tr.timer)
    assert tr.steps_per_epoch() > 1 and probe.syncs == [], probe.syncs


# ---------------------------------------------------------------- a GPU run on a CPU machine
def test_gpu_trained_run_evaluates_exports_and_resumes_on_cpu(ds_dir, tmp_path):
    run = tmp_path / "run"
    invoke("train", ds_dir, "-o", run, "--epochs", "2", "--backend", "torch", "--device", "cpu", *FAST)
    before = json.loads(invoke("evaluate", run, "--json").output)
    invoke("export-embeddings", run, "-o", tmp_path / "e1")
    invoke("train", ds_dir, "-o", tmp_path / "ref", "--epochs", "3", "--backend", "torch", "--device", "cpu", *FAST)

    # what a run trained with --device cuda leaves: device cuda in its config and run.json, and the
    # CUDA generator's state in its checkpoints
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["device"] = "cuda"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    info_json = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info_json, "device": "cuda:0"}))
    for name in ("last.pt", "best.pt"):
        state, info = load_checkpoint(run / "checkpoints" / name)
        state["cuda_rng"] = torch.get_rng_state().clone()
        save_checkpoint(run / "checkpoints" / name, state, {**info, "config": cfg})

    after = json.loads(invoke("evaluate", run, "--json").output)
    assert after["metrics"] == before["metrics"]
    invoke("export-embeddings", run, "-o", tmp_path / "e2")
    for table in ("users", "items"):
        np.testing.assert_array_equal(np.load(tmp_path / "e1" / f"{table}.npy"),
                                      np.load(tmp_path / "e2" / f"{table}.npy"))
    if not CUDA:
        res = invoke("train", "--resume", run, "--epochs", "3", "--quiet", expect=2)
        assert "torch sees no GPU here" in res.output
    invoke("train", "--resume", run, "--epochs", "3", "--device", "cpu", "--quiet")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["losses"] for r in rows] == [r["losses"] for r in ref], "the resume continues exactly"


# ---------------------------------------------------------------- the GPU image's stack
_BLOCK = """
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dgl", "scipy"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by test)", name=name)
sys.meta_path.insert(0, _Absent())
sys.argv = ["cml"] + sys.argv[1:]
from cml_dgl_cli.main import cli
try:
    cli()
finally:
    assert not [m for m in sys.modules if m.split(".")[0] in ("dgl", "scipy")]
"""


def test_training_needs_neither_dgl_nor_scipy(ds_dir, tmp_path):
    """The GPU machines' image has no DGL and maybe no scipy: training, sampled evaluation and
    checkpoints work without them (torch backend, MRR via torch's digamma)."""
    args = ["train", str(ds_dir), "--epochs", "2", "--device", "cpu", *FAST]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _BLOCK, *args, "-o", str(tmp_path / "bare")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    invoke(*args, "--backend", "torch", "-o", tmp_path / "full")
    rows = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("bare", "full")}
    for a, b in zip(rows["bare"], rows["full"], strict=True):
        assert a["losses"] == b["losses"]
        assert a["valid"] == pytest.approx(b["valid"], abs=2e-6)
    assert json.loads((tmp_path / "bare" / "run.json").read_text())["device"] == "cpu"


# ---------------------------------------------------------------- on a GPU
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (bench/gpu_check.sh runs the GPU checks)")
def test_cuda_training_keeps_everything_on_the_device(ds_dir, tmp_path):
    cfg = config.resolve(overrides=["device=cuda", "backend=auto", "batch_size=32", "meta_batch=8",
                                    "meta_samples=4", "epochs=2"])
    tr = Trainer(load_dataset(ds_dir), cfg, tmp_path / "run", quiet=True)
    assert tr.model.propagator.backend == "torch" and tr.model.propagator.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in list(tr.model.parameters()) + list(tr.strategy.meta.parameters()))
    tr.prepare_run_dir()
    summary = tr.fit()
    assert summary["epochs_run"] == 2
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert "cuda_rng" in state and all(v.device.type == "cpu" for v in state["model"].values())


# ---------------------------------------------------------------- CPU determinism at scale
def test_objective_gradient_is_deterministic_on_large_batches(ds_dir, tmp_path):
    """Row gathers of tens of thousands of rows: their backward must add in a fixed order (the
    backward of ``x[index]`` is multi-threaded on the CPU and varied in the last bits)."""
    from cml_dgl.models.cml import CMLOutput
    from cml_dgl.models.cml_loss import CMLBatch

    tr = _trainer(ds_dir, tmp_path, "variant=no-meta")
    K, U, I, n = tr.ds.n_behaviors, 3_000, 5_000, 60_000
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(U, 16, generator=g), torch.randn(I, 16, generator=g), torch.randn(K, U, 16, generator=g),
              torch.randn(U, 16, generator=g), torch.randn(I, 16, generator=g)]  # the last two: ego rows (reg_on: ego)
    trip = [smp.DeviceTriples(torch.randint(0, U, (n,), generator=g), torch.randint(0, I, (n,), generator=g),
                                  torch.randint(0, I, (n,), generator=g)) for _ in range(K)]
    cl = torch.randint(0, U, (1_500,), generator=g)
    grads = []
    for _ in range(4):
        ts = [x.clone().requires_grad_() for x in leaves]
        obj, _ = tr.model.objective(CMLOutput(ts[0], ts[1], ts[2], ts[1].new_empty(0), ts[3], ts[4]), CMLBatch(trip, cl, "none"))
        obj.backward()
        grads.append([t.grad for t in ts])
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))
