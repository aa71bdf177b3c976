"""Baselines: popularity counts, MF and LightGCN shapes, training, propagation and graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cml_dgl.errors import CmlError
from cml_dgl.eval.evaluate import full_rank_bounds
from cml_dgl.graph.backends import build_propagator
from cml_dgl.models import registry
from cml_dgl.models.baselines import MF, LightGCN, Popularity
from cml_dgl.train import config
from tests.conftest import dense_adjacency, make_tiny_dataset


def make_baseline(name, ds, dim=64, n_layers=3, backend="auto"):
    cfg = config.resolve(overrides=[f"model={name}", f"dim={dim}", f"n_layers={n_layers}", f"backend={backend}"])
    return registry.build(ds, cfg, torch.device("cpu"))


def bpr_edges(name, ds):
    return make_baseline(name, ds, dim=2, backend="torch").training_edges(ds)


def dense_lightgcn(a: np.ndarray, e_u: np.ndarray, e_i: np.ndarray, n_layers: int):
    """Reference LightGCN with a dense binary A (U x I): mean of layers of Â = D_u^-1/2 A D_i^-1/2."""
    du, di = a.sum(1), a.sum(0)
    inv_u = np.where(du > 0, 1 / np.sqrt(np.maximum(du, 1)), 0.0)
    inv_i = np.where(di > 0, 1 / np.sqrt(np.maximum(di, 1)), 0.0)
    a_hat = inv_u[:, None] * a * inv_i[None, :]
    hu, hi, su, si = e_u, e_i, e_u.copy(), e_i.copy()
    for _ in range(n_layers):
        hu, hi = a_hat @ hi, a_hat.T @ hu
        su, si = su + hu, si + hi
    return su / (n_layers + 1), si / (n_layers + 1)



def triples(ds, users, items, n: int, seed: int):
    rng = np.random.default_rng(seed)
    j = rng.integers(0, len(users), size=n)
    return (torch.from_numpy(users[j]), torch.from_numpy(items[j]),
            torch.from_numpy(rng.integers(0, ds.n_items, size=n)))


def test_popularity_ranks_items_by_training_counts():
    ds = make_tiny_dataset(seed=1)
    for name, counts in (("pop", np.bincount(ds.train_item, minlength=ds.n_items)),
                         ("pop-target", np.bincount(ds.edges(ds.n_behaviors - 1)[1], minlength=ds.n_items))):
        model = make_baseline(name, ds)
        assert model.trainable is False and registry.spec(name).strategy == "none"
        with pytest.raises(CmlError, match="not trained"):
            model.loss(None)
        ue, ie = model.embeddings()
        assert ue.shape == (ds.n_users, 1) and ie.shape == (ds.n_items, 1)
        scores = (ue @ ie.T).numpy()
        np.testing.assert_array_equal(scores, np.tile(counts, (ds.n_users, 1)))
        # rank of the positive = number of items more popular (no mask), ties = equally popular
        g, t = full_rank_bounds((ue, ie), ds.test, None)
        pos_counts = counts[ds.test[:, 1]]
        np.testing.assert_array_equal(g, (counts[None, :] > pos_counts[:, None]).sum(1))
        np.testing.assert_array_equal(t, (counts[None, :] == pos_counts[:, None]).sum(1) - 1)
        assert model.state_dict() == {}  # counts come from the dataset, not a checkpoint
    pop = Popularity(Popularity.counts(ds), ds.n_users).embeddings()[1].squeeze(1)
    pop_t = Popularity(Popularity.counts(ds, target_only=True), ds.n_users).embeddings()[1].squeeze(1)
    assert (pop >= pop_t).all() and (pop > pop_t).any()


@pytest.mark.parametrize("name", ["mf", "lightgcn", "lightgcn-merged"])
def test_trainable_baselines_shapes_and_loss_decreases(name):
    torch.manual_seed(0)
    ds = make_tiny_dataset(seed=2)
    model = make_baseline(name, ds, dim=16, n_layers=2, backend="torch")
    assert model.trainable is True and registry.spec(name).strategy == "pair"
    ue, ie = model.embeddings()
    assert ue.shape == (ds.n_users, 16) and ie.shape == (ds.n_items, 16)
    users, items = bpr_edges(name, ds)
    u, p, n = triples(ds, users, items, 256, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = model.bpr_loss(u, p, n, reg=1e-4)
    assert first.dim() == 0
    for _ in range(30):
        opt.zero_grad()
        loss = model.bpr_loss(u, p, n, reg=1e-4)
        loss.backward()
        opt.step()
    assert model.bpr_loss(u, p, n, reg=1e-4).item() < 0.5 * first.item()


def test_bpr_loss_formula():
    torch.manual_seed(1)
    model = MF(5, 7, dim=4)
    u, p, n = torch.tensor([0, 1, 4]), torch.tensor([2, 3, 6]), torch.tensor([5, 0, 1])
    eu, ei = model.user_emb.weight, model.item_emb.weight
    x = (eu[u] * ei[p]).sum(1) - (eu[u] * ei[n]).sum(1)
    l2 = (eu[u].pow(2).sum() + ei[p].pow(2).sum() + ei[n].pow(2).sum()) / 2 / 3
    want = -torch.log(torch.sigmoid(x)).mean() + 0.3 * l2
    assert model.bpr_loss(u, p, n, reg=0.3).item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("name,behaviors", [("lightgcn", "target"), ("lightgcn-merged", "all")])
def test_lightgcn_matches_dense_reference(name, behaviors, backend):
    torch.manual_seed(3)
    ds = make_tiny_dataset(seed=3)
    ks = [ds.n_behaviors - 1] if behaviors == "target" else list(range(ds.n_behaviors))
    model = make_baseline(name, ds, dim=8, n_layers=3, backend=backend)
    eu0 = model.user_emb.weight.detach().double().numpy()
    ei0 = model.item_emb.weight.detach().double().numpy()
    want_u, want_i = dense_lightgcn(dense_adjacency(ds, ks), eu0, ei0, 3)
    got_u, got_i = model.embeddings()
    np.testing.assert_allclose(got_u.detach().numpy(), want_u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_i.detach().numpy(), want_i, rtol=1e-5, atol=1e-6)


def test_lightgcn_merged_learns_from_and_propagates_over_the_union():
    ds = make_tiny_dataset(seed=4)
    u, i = bpr_edges("lightgcn-merged", ds)
    union = {(a, b) for a, b in zip(ds.train_user.tolist(), ds.train_item.tolist())}
    assert set(zip(u.tolist(), i.tolist())) == union and len(u) == len(union)
    assert u.dtype == np.int64 and i.dtype == np.int64
    tu, ti = bpr_edges("lightgcn", ds)
    assert set(zip(tu.tolist(), ti.tolist())) < union
    tm, im = bpr_edges("mf", ds)
    np.testing.assert_array_equal(tm, tu)
    np.testing.assert_array_equal(im, ti)
    merged = make_baseline("lightgcn-merged", ds, dim=4, backend="torch")
    assert merged.propagator.n_behaviors == 1
    assert sum(merged.propagator.n_edges) == len(union)
    with pytest.raises(CmlError, match="no pairwise training positives"):
        bpr_edges("pop", ds)


def test_lightgcn_without_layers_is_mf_and_propagator_outside_state_dict():
    torch.manual_seed(5)
    ds = make_tiny_dataset(seed=5)
    model = make_baseline("lightgcn", ds, dim=6, n_layers=0, backend="torch")
    ue, ie = model.embeddings()
    assert torch.equal(ue, model.user_emb.weight) and torch.equal(ie, model.item_emb.weight)
    assert set(model.state_dict()) == {"user_emb.weight", "item_emb.weight"}
    mf = MF(ds.n_users, ds.n_items, dim=6)
    mf.load_state_dict(model.state_dict())
    u, p, n = triples(ds, *bpr_edges("lightgcn", ds), 32, seed=1)
    assert model.bpr_loss(u, p, n, 0.1).item() == pytest.approx(mf.bpr_loss(u, p, n, 0.1).item(), rel=1e-6)


def test_lightgcn_refuses_multi_relation_propagator_and_unknown_names():
    ds = make_tiny_dataset(seed=6)
    prop = build_propagator(ds.n_users, ds.n_items, [ds.edges(k) for k in range(ds.n_behaviors)], backend="torch")
    with pytest.raises(CmlError, match="exactly one relation"):
        LightGCN(ds.n_users, ds.n_items, prop)
    with pytest.raises(CmlError, match="unknown model 'ngcf'"):
        registry.spec("ngcf")
