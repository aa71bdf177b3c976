"""The torch samplers that draw on the training device (``sampler: device``), checked on the CPU
against the rules of the host samplers: same supports, same sizes, uniform draws, exact resume,
and a bounded number of host syncs per epoch whatever the number of steps."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cml_dgl_cli.main import cli
from cml_dgl.data.dataset import write_dataset
from cml_dgl.train import config, draws
from cml_dgl.train.draws import host as smp
from cml_dgl.train.draws.device import DeviceDraws, TorchEdgeIndex
from cml_dgl.train.trainer import Trainer
from conftest import make_tiny_dataset

CPU = torch.device("cpu")
FAST = ["--set", "batch_size=32", "--set", "meta_batch=8", "--set", "meta_samples=4", "--quiet"]


@pytest.fixture(scope="module")
def sparse_ds():
    """Sparse enough that some users lack view or cart edges (their rows must be dropped)."""
    ds = make_tiny_dataset(n_users=60, n_items=40, density=0.08, seed=11)
    index = smp.edge_indices(ds)
    assert any((ix.degree == 0).any() for ix in index[:-1]), "fixture must have users without aux edges"
    return ds


def _dense(ds, k):
    d = np.zeros((ds.n_users, ds.n_items), bool)
    u, i = ds.edges(k)
    d[u, i] = True
    return d


def _trainer(ds, tmp_path, *sets):
    cfg = config.resolve(overrides=["backend=torch", "device=cpu", "sampler=device", "batch_size=32",
                                    "meta_batch=8", "meta_samples=4", *sets])
    return Trainer(ds, cfg, tmp_path / "run", quiet=True)


def test_auto_sampler_is_the_device_on_a_gpu_and_the_host_on_a_cpu():
    assert draws.resolve_sampler("auto", torch.device("cuda")) == "device"
    assert draws.resolve_sampler("auto", CPU) == "host"
    assert draws.resolve_sampler("device", CPU) == "device"
    with pytest.raises(Exception, match="unknown sampler"):
        draws.resolve_sampler("gpu", CPU)


def test_torch_edge_index_matches_the_host_one(sparse_ds):
    ds, gen = sparse_ds, torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for k in range(ds.n_behaviors):
        host = smp.EdgeIndex(*ds.edges(k), ds.n_users, ds.n_items)
        dev, dense = TorchEdgeIndex(host, CPU), _dense(ds, k)
        qu, qi = rng.integers(0, ds.n_users, 2000), rng.integers(0, ds.n_items, 2000)
        got = dev.contains(torch.from_numpy(qu), torch.from_numpy(qi)).numpy()
        np.testing.assert_array_equal(got, dense[qu, qi])
        users = torch.arange(ds.n_users).repeat_interleave(30)
        nb = dev.random_neighbor(users, gen).numpy()
        has = dense.any(1)[users.numpy()]
        assert (nb[~has] == -1).all() and dense[users.numpy()[has], nb[has]].all()
        neg = dev.sample_negatives(users, gen).numpy()
        assert not dense[users.numpy(), neg].any()


def test_device_draws_are_uniform():
    """One user with items {0, 1, 2} of 6: neighbours uniform on the three, negatives on the rest."""
    host = smp.EdgeIndex(np.zeros(3, dtype=np.int64), np.array([0, 1, 2]), 1, 6)
    ix, gen = TorchEdgeIndex(host, CPU), torch.Generator().manual_seed(1)
    users = torch.zeros(30_000, dtype=torch.int64)
    for draw, support in ((ix.random_neighbor(users, gen), [0, 1, 2]), (ix.sample_negatives(users, gen), [3, 4, 5])):
        counts = np.bincount(draw.numpy(), minlength=6)
        assert counts[support].sum() == 30_000
        assert np.allclose(counts[support] / 30_000, 1 / 3, atol=0.02)
    t, n = ix.draw_per_user(torch.zeros(4, dtype=torch.int64), 2, gen)
    assert n.tolist() == [2, 2, 2, 2] and len(t) == 8 and set(t.pos.tolist()) <= {0, 1, 2}


def test_an_epoch_of_device_draws_follows_the_host_rules(sparse_ds, tmp_path):
    ds = sparse_ds
    tr = _trainer(ds, tmp_path, "meta_cl_all_users=false", "aux_draws=target")  # one draw per purchase
    assert isinstance(tr.strategy.draws, DeviceDraws)
    K, B, ratio = ds.n_behaviors, tr.cfg["batch_size"], tr.cfg["cl_sample_ratio"]
    dense = [_dense(ds, k) for k in range(K)]
    pointer = smp.MetaPointer(tr.strategy.meta_pointer.users, tr.cfg["meta_batch"])
    steps = tr.strategy.draws.cml_steps()
    tu, ti = ds.edges(K - 1)
    assert len(steps) == -(-len(tu) // B) > 2
    seen_target, kept = [], np.zeros(K, dtype=int)
    for j, step in enumerate(steps):
        target = step.triples[K - 1]
        batch_users = target.users.numpy()
        assert len(batch_users) == min(B, len(tu) - j * B)
        seen_target += list(zip(batch_users.tolist(), target.pos.tolist()))
        for k, t in enumerate(step.triples):
            u, p, n = t.users.numpy(), t.pos.numpy(), t.neg.numpy()
            assert dense[k][u, p].all() and not dense[k][u, n].any()
            assert not Counter(u.tolist()) - Counter(batch_users.tolist()), "rows come from the batch"
            kept[k] += len(u)
        for sample in (step.cl_clone, step.cl_main):
            want = int(len(batch_users) * ratio)
            assert len(sample) == (want if want >= 2 else 0)
            assert not Counter(sample.tolist()) - Counter(batch_users.tolist()), "drawn without replacement"
        meta_users = pointer.next()
        for k, t in enumerate(step.meta_triples):
            np.testing.assert_array_equal(np.bincount(t.users.numpy(), minlength=ds.n_users),
                                          np.bincount(np.repeat(meta_users, np.minimum(dense[k][meta_users].sum(1), 4)),
                                                      minlength=ds.n_users))
            assert dense[k][t.users, t.pos].all() and not dense[k][t.users, t.neg].any()
        want = int(len(meta_users) * ratio)
        assert len(step.cl_meta) == (want if want >= 2 else 0)
        assert not Counter(step.cl_meta.tolist()) - Counter(meta_users.tolist())
    assert sorted(seen_target) == sorted(zip(tu.tolist(), ti.tolist())), "each purchase once per epoch"
    for k in range(K - 1):  # a row is dropped exactly where its user has no behavior-k edge
        assert kept[k] == dense[k].any(1)[tu].sum()
    assert tr.strategy.meta_pointer.pos == pointer.pos


def test_device_draws_depend_on_the_seed_only(sparse_ds, tmp_path):
    def flat(tr):
        out = []
        for step in tr.strategy.draws.cml_steps():
            out += [x.tolist() for t in step.triples + step.meta_triples for x in (t.users, t.pos, t.neg)]
            out += [step.cl_clone.tolist(), step.cl_main.tolist(), step.cl_meta.tolist()]
        return out

    a, b = flat(_trainer(sparse_ds, tmp_path)), flat(_trainer(sparse_ds, tmp_path))
    c = flat(_trainer(sparse_ds, tmp_path, "seed=5"))
    assert a == b and a != c


def test_pair_draws_cover_every_edge_once(sparse_ds, tmp_path):
    tr = _trainer(sparse_ds, tmp_path, "model=mf")
    t = tr.strategy.draws.pair_triples()
    u, i = sparse_ds.edges(sparse_ds.n_behaviors - 1)
    assert sorted(zip(t.users.tolist(), t.pos.tolist())) == sorted(zip(u.tolist(), i.tolist()))
    assert not _dense(sparse_ds, sparse_ds.n_behaviors - 1)[t.users, t.neg].any()


@pytest.mark.parametrize("model", ["cml", "mf"])
def test_device_sampled_training_is_reproducible_and_resumes_exactly(tmp_path, model):
    d = tmp_path / "ds"
    write_dataset(make_tiny_dataset(n_users=40, n_items=60, seed=3), d)
    common = ["--backend", "torch", "--device", "cpu", "--model", model, "--set", "sampler=device", *FAST]

    def train(name, epochs, *extra):
        res = CliRunner().invoke(cli, ["train", str(d), "-o", str(tmp_path / name), "--epochs", str(epochs),
                                       *common, *extra])
        assert res.exit_code == 0, res.output
        return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    a, b = train("a", 3), train("b", 3)
    assert a == [dict(r, seconds=x["seconds"], timings=x["timings"]) for r, x in zip(b, a)]
    host = train("host", 3, "--set", "sampler=host")
    assert [r["losses"] for r in host] != [r["losses"] for r in a], "another stream than numpy's"
    train("r", 2)
    res = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "r"), "--epochs", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["losses"] for r in rows] == [r["losses"] for r in a]
    assert json.loads((tmp_path / "a" / "run.json").read_text())["sampler"] == "device"


def test_a_gpu_sampled_run_resumes_on_a_cpu_with_a_fresh_stream(tmp_path, monkeypatch, capsys):
    """sampler=auto draws on the device on a GPU and on the host on a CPU: a GPU run resumed with
    --device cpu cannot continue the device stream, so it warns and re-seeds (deterministically)."""
    from cml_dgl.train import strategies
    from cml_dgl.train.draws import factory

    d = tmp_path / "ds"
    write_dataset(make_tiny_dataset(n_users=40, n_items=60, seed=3), d)
    as_on_gpu = lambda name, device: "device"  # noqa: E731
    monkeypatch.setattr(strategies, "resolve_sampler", as_on_gpu)
    monkeypatch.setattr(factory, "resolve_sampler", as_on_gpu)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", str(d), "-o", str(run), "--epochs", "1", "--backend", "torch",
                                   "--device", "cpu", *FAST])
    assert res.exit_code == 0, res.output
    monkeypatch.undo()
    losses = []
    for copy in ("r1", "r2"):
        import shutil

        shutil.copytree(run, tmp_path / copy)
        res = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / copy), "--epochs", "2", "--quiet"])
        assert res.exit_code == 0, res.output
        assert "sampler state does not fit the host sampler" in res.output
        rows = [json.loads(x) for x in (tmp_path / copy / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2]
        losses.append(rows[1]["losses"])
    assert losses[0] == losses[1]
    tr = _trainer(make_tiny_dataset(), tmp_path)
    assert not tr.strategy.draws.load_state({"sampler_rng": torch.zeros(16, dtype=torch.uint8)})  # a CUDA state
    assert tr.strategy.draws.load_state(tr.strategy.draws.state())


@pytest.mark.parametrize("sampler", ["host", "device"])
def test_history_negatives_in_both_samplers(sparse_ds, tmp_path, sampler):
    """history_negatives=1: every target negative of a user with viewed/carted items not bought is
    one of those; the others stay uniform non-purchases; the auxiliary negatives keep their rule."""
    ds = sparse_ds
    K = ds.n_behaviors
    off = _trainer(ds, tmp_path / "off", f"sampler={sampler}", "history_negatives=1.0")
    assert off.strategy.draws.pool is None, "without the history term the negatives stay uniform"
    tr = _trainer(ds, tmp_path, f"sampler={sampler}", "history_negatives=1.0", "history=always")
    dense = [_dense(ds, k) for k in range(K)]
    pool = np.any(dense[:-1], axis=0) & ~dense[-1]
    n_pool = 0
    for step in tr.strategy.draws.cml_steps():
        t = step.triples[K - 1]
        u, n = t.users.numpy(), t.neg.numpy()
        has = pool[u].any(1)
        assert pool[u[has], n[has]].all() and not dense[-1][u, n].any()
        n_pool += int(has.sum())
        for k in range(K - 1):
            a = step.triples[k]
            assert not dense[k][a.users.numpy(), a.neg.numpy()].any()
    assert n_pool > 0


@pytest.mark.parametrize("sampler", ["host", "device"])
def test_aux_draws_edges_pass_over_every_auxiliary_edge_once_per_epoch(sparse_ds, tmp_path, sampler):
    """aux_draws=edges: each auxiliary behavior's triples of an epoch are its edges, each once,
    with negatives outside the user's items of it, shared out over the batches in proportion to
    their target rows; the target's rows keep their rule (each purchase once)."""
    ds = sparse_ds
    K = ds.n_behaviors
    tr = _trainer(ds, tmp_path, f"sampler={sampler}", "aux_draws=edges")
    steps = tr.strategy.draws.cml_steps()
    tu, ti = ds.edges(K - 1)
    n, B = len(tu), tr.cfg["batch_size"]
    assert len(steps) == -(-n // B) > 2
    for k in range(K):
        got = [(u, p) for s in steps for u, p in zip(s.triples[k].users.tolist(), s.triples[k].pos.tolist())]
        u, i = ds.edges(k)
        assert sorted(got) == sorted(zip(u.tolist(), i.tolist())), k
        neg = np.concatenate([s.triples[k].neg.numpy() for s in steps])
        users = np.concatenate([s.triples[k].users.numpy() for s in steps])
        assert not _dense(ds, k)[users, neg].any()
    for k in range(K - 1):
        E = len(ds.edges(k)[0])
        sizes = [len(s.triples[k]) for s in steps]
        assert sizes == [min((j + 1) * B, n) * E // n - j * B * E // n for j in range(len(steps))], (k, sizes)
    again = _trainer(ds, tmp_path / "b", f"sampler={sampler}", "aux_draws=edges").strategy.draws.cml_steps()
    assert [s.triples[0].pos.tolist() for s in again] == [s.triples[0].pos.tolist() for s in steps]
    per_purchase = _trainer(ds, tmp_path / "c", f"sampler={sampler}", "aux_draws=target").strategy.draws.cml_steps()
    assert sum(len(s.triples[0]) for s in per_purchase) < len(ds.edges(0)[0]), "target draws per purchase"
