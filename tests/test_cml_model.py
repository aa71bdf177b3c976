"""The CML encoder: shapes, the equations against a dense reference, clone, readout and cold items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cml_dgl.errors import CmlError
from cml_dgl.graph import build_propagator, propagator_for_dataset
from cml_dgl.models import CML
from cml_dgl.models.base import score_rows


def _model(ds, activation="prelu", norm="sym", dim=6, n_layers=3, seed=0):
    torch.manual_seed(seed)
    prop = propagator_for_dataset(ds, backend="torch", norm=norm)
    return CML(ds.n_users, ds.n_items, ds.n_behaviors, prop, dim=dim, n_layers=n_layers, activation=activation)


def test_shapes_and_fused_embeddings(tiny_dataset):
    ds = tiny_dataset
    model = _model(ds)
    out = model()
    K, U, I = ds.n_behaviors, ds.n_users, ds.n_items
    assert out.user.shape == (U, 6) and out.item.shape == (I, 6)
    assert out.user_beh.shape == (K, U, 6) and out.item_beh.shape == (K, I, 6)
    user, item = model.embeddings()
    torch.testing.assert_close(user, out.user)
    torch.testing.assert_close(item, out.item)
    assert "propagator" not in dict(model.named_modules()) and not any("prop" in k for k in model.state_dict())
    users = torch.tensor([0, 3])
    cands = torch.tensor([[1, 2, 5], [0, 4, 7]])
    s = score_rows(user, item, users, cands)
    assert s.shape == (2, 3)
    assert torch.allclose(s[1, 2], user[3] @ item[7])
    assert torch.allclose(score_rows(user, item, users, cands[:, 0]), s[:, 0])


def _dense_forward(model, ds, norm):
    """Eq. 1-2 and the readout written out with dense float64 matrices."""
    mats = []
    for k in range(ds.n_behaviors):
        a = ds.csr(k).toarray().astype(np.float64)
        if norm == "sym":
            du, di = a.sum(1, keepdims=True), a.sum(0, keepdims=True)
            a = a / np.sqrt(np.where(du > 0, du, 1)) / np.sqrt(np.where(di > 0, di, 1))
        mats.append(a)
    p = {n: t.detach().double().numpy() for n, t in model.state_dict().items()}
    if model.activation == "sigmoid":
        acts = [(lambda x: 1 / (1 + np.exp(-x)),) * 2 for _ in range(model.n_layers)]
    else:
        acts = [tuple((lambda x, a=p[f"{side}_act.{l}.weight"][0]: np.where(x > 0, x, a * x))
                      for side in ("user", "item")) for l in range(model.n_layers)]
    hu, hi = p["user_emb"], p["item_emb"]
    fu, fi, bu, bi = [], [], [], []
    for l in range(model.n_layers):
        pu = [a @ hi for a in mats]
        pi = [a.T @ hu for a in mats]
        wu, wi = p[f"user_w.{l}"], p[f"item_w.{l}"]
        hu = acts[l][0](np.mean(pu, 0) @ wu)
        hi = acts[l][1](np.mean(pi, 0) @ wi)
        fu.append(hu); fi.append(hi)
        bu.append([acts[l][0](x @ wu) for x in pu]); bi.append([acts[l][1](x @ wi) for x in pi])
    cu, ci = p["user_readout"], p["item_readout"]
    user_beh = np.stack([np.concatenate([bu[l][k] for l in range(model.n_layers)], 1) @ cu
                         for k in range(ds.n_behaviors)])
    item_beh = np.stack([np.concatenate([bi[l][k] for l in range(model.n_layers)], 1) @ ci
                         for k in range(ds.n_behaviors)])
    return np.concatenate(fu, 1) @ cu, np.concatenate(fi, 1) @ ci, user_beh, item_beh


@pytest.mark.parametrize("activation", ["prelu", "sigmoid"])
@pytest.mark.parametrize("norm", ["sym", "none"])
def test_forward_matches_dense_equations(tiny_dataset, activation, norm):
    model = _model(tiny_dataset, activation=activation, norm=norm)
    if activation == "prelu":
        with torch.no_grad():  # distinct slopes per layer/side so a mixed-up PReLU would show
            for l in range(model.n_layers):
                model.user_act[l].weight.fill_(0.1 + 0.1 * l)
                model.item_act[l].weight.fill_(0.05 + 0.2 * l)
    out = model()
    ref = _dense_forward(model, tiny_dataset, norm)
    for got, want in zip((out.user, out.item, out.user_beh, out.item_beh), ref):
        np.testing.assert_allclose(got.detach().double().numpy(), want, atol=1e-5, rtol=1e-5)


def test_sigmoid_and_prelu_differ(tiny_dataset):
    a = _model(tiny_dataset, activation="prelu")
    b = _model(tiny_dataset, activation="sigmoid")
    b.load_state_dict({k: v for k, v in a.state_dict().items() if "_act." not in k})
    assert not torch.allclose(a().user, b().user, atol=1e-3)
    assert sum(p.numel() for p in a.parameters()) - sum(p.numel() for p in b.parameters()) == 2 * a.n_layers
    with pytest.raises(CmlError, match="activation"):
        _model(tiny_dataset, activation="relu")


def _isolated_graph():
    """8 users, 10 items; user 7 and items 8, 9 have no edge in any behavior."""
    edges = [(np.array([0, 1, 2, 3, 4, 5, 6]), np.array([0, 1, 2, 3, 4, 5, 6])),
             (np.array([0, 2, 4, 6]), np.array([7, 6, 1, 0])),
             (np.array([1, 3]), np.array([2, 7]))]
    return 8, 10, edges


def test_readout_excludes_the_ego_layer():
    n_users, n_items, edges = _isolated_graph()
    torch.manual_seed(0)
    model = CML(n_users, n_items, 3, build_propagator(n_users, n_items, edges, backend="torch"), dim=4, n_layers=2)
    assert model.user_readout.shape == (2 * 4, 4)
    before = model()
    with torch.no_grad():
        model.user_emb[7] += 5.0  # isolated user: its ego embedding reaches nothing but layer 0
        model.item_emb[9] -= 5.0
    after = model()
    torch.testing.assert_close(after.user, before.user)
    torch.testing.assert_close(after.item, before.item)
    torch.testing.assert_close(after.user_beh, before.user_beh)
    with torch.no_grad():
        model.user_emb[0] += 5.0  # a connected user does change its neighbours
    assert not torch.allclose(model().item[0], before.item[0])


@pytest.mark.parametrize("activation", ["prelu", "sigmoid"])
def test_items_without_edges_share_one_embedding(activation):
    """Documents the cold-item tie (spec 2, B8): evaluation must break such ties explicitly."""
    n_users, n_items, edges = _isolated_graph()
    torch.manual_seed(0)
    model = CML(n_users, n_items, 3, build_propagator(n_users, n_items, edges, backend="torch", norm="none"),
                dim=4, activation=activation)
    user, item = model.embeddings()
    torch.testing.assert_close(item[8], item[9])
    assert not torch.allclose(item[8], item[0])
    s = score_rows(user, item, torch.tensor([0, 0]), torch.tensor([8, 9]))
    assert s[0] == s[1]


def test_clone_shares_propagator_and_copies_parameters(tiny_dataset):
    model = _model(tiny_dataset)
    model().user.sum().backward()
    twin = model.clone()
    assert twin.propagator is model.propagator
    assert all(p.grad is None for p in twin.parameters())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(model.parameters(), twin.parameters()))
    ref = model()
    out = twin()
    for f in ("user", "item", "user_beh", "item_beh"):
        torch.testing.assert_close(getattr(out, f), getattr(ref, f))
    with torch.no_grad():
        twin.item_w[0].mul_(2.0)
        twin.user_act[1].weight.fill_(0.9)
    changed = twin()
    assert not torch.allclose(changed.user, ref.user)
    torch.testing.assert_close(model().user, ref.user)


def test_model_and_propagator_must_agree(tiny_dataset):
    prop = propagator_for_dataset(tiny_dataset, backend="torch")
    with pytest.raises(CmlError, match="propagator has"):
        CML(tiny_dataset.n_users, tiny_dataset.n_items, tiny_dataset.n_behaviors + 1, prop)


def test_forward_without_item_views_matches_full_forward(tiny_dataset):
    from cml_dgl.graph.backends import propagator_for_dataset
    from cml_dgl.models.cml import CML

    ds = tiny_dataset
    torch.manual_seed(0)
    model = CML(ds.n_users, ds.n_items, ds.n_behaviors, propagator_for_dataset(ds, backend="torch"))
    full, lean = model(), model(item_behavior=False)
    assert lean.item_beh.numel() == 0
    for a, b in ((full.user, lean.user), (full.item, lean.item), (full.user_beh, lean.user_beh)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
