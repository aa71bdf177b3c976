"""The DGL and pure-torch message-passing backends agree with each other and with dense algebra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cml_dgl.errors import CmlError
from cml_dgl.graph import build_propagator, propagator_for_dataset, resolve_backend
from cml_dgl.graph.build import prepare_relations
from cml_dgl.models import CML
from conftest import make_tiny_dataset

pytest.importorskip("dgl", reason="the DGL backend needs dgl 2.1 (pip install 'cml-dgl[dgl]')")

NORMS = ["sym", "none"]


def _dense_reference(n_users, n_items, edges, norm):
    """Â_k as dense float64 numpy matrices, from the definition."""
    mats = []
    for u, i in edges:
        a = np.zeros((n_users, n_items))
        a[u, i] = 1.0
        if norm == "sym":
            du, di = a.sum(1), a.sum(0)
            inv_u = np.where(du > 0, 1 / np.sqrt(np.maximum(du, 1)), 0.0)
            inv_i = np.where(di > 0, 1 / np.sqrt(np.maximum(di, 1)), 0.0)
            a = inv_u[:, None] * a * inv_i[None, :]
        mats.append(a)
    return mats


def _graphs():
    """(name, n_users, n_items, edges, names): the tiny dataset, one with an empty behavior,
    duplicate edges and isolated users/items, and one whose relations cover very different shares
    of the nodes."""
    ds = make_tiny_dataset()
    tiny = [ds.edges(k) for k in range(ds.n_behaviors)]
    rng = np.random.default_rng(3)
    u = rng.integers(0, 6, 25)
    i = rng.integers(0, 8, 25)
    odd = [(u, i), (np.zeros(0, np.int64), np.zeros(0, np.int64)), (u[:7], i[:7])]
    # one relation over almost every node, one over a few items, one over a few users; edges in
    # random order with duplicates
    dense = (rng.integers(0, 30, 400), rng.integers(0, 50, 400))
    few_items = (rng.integers(0, 30, 60), rng.choice([3, 17, 18, 40, 41, 49], 60))
    few_users = (rng.choice([0, 5, 29], 40), rng.integers(0, 50, 40))
    return [("tiny", ds.n_users, ds.n_items, tiny, ds.behaviors),
            ("empty-behavior", 9, 11, odd, ["pv", "fav", "buy"]),
            ("sparse-sides", 30, 50, [dense, few_items, few_users], ["view", "cart", "buy"])]


GRAPHS = _graphs()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("graph", GRAPHS, ids=[g[0] for g in GRAPHS])
def test_backends_match_dense_reference(graph, norm):
    _, n_users, n_items, edges, names = graph
    torch.manual_seed(0)
    h_user = torch.randn(n_users, 5)
    h_item = torch.randn(n_items, 5)
    ref = _dense_reference(n_users, n_items, edges, norm)
    expect_u = np.stack([a @ h_item.double().numpy() for a in ref])
    expect_i = np.stack([a.T @ h_user.double().numpy() for a in ref])
    outs = {}
    for backend in ("dgl", "torch"):
        prop = build_propagator(n_users, n_items, edges, backend=backend, norm=norm, names=names)
        assert prop.backend == backend and prop.n_behaviors == len(edges)
        p_u, p_i = prop(h_user, h_item)
        assert p_u.shape == (len(edges), n_users, 5) and p_i.shape == (len(edges), n_items, 5)
        outs[backend] = (p_u, p_i)
    for backend in ("torch", "dgl"):
        np.testing.assert_allclose(outs[backend][0].numpy(), expect_u, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(outs[backend][1].numpy(), expect_i, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["dgl"][0], outs["torch"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["dgl"][1], outs["torch"][1], atol=1e-5, rtol=1e-5)


def test_relation_order_is_kept_whatever_the_names():
    """DGL sorts relation names; the propagator must still return them in the given order."""
    edges = [(np.array([0]), np.array([0])), (np.array([1, 1]), np.array([0, 1])), (np.zeros(0, int), np.zeros(0, int))]
    h_user = torch.tensor([[1.0], [10.0]])
    h_item = torch.tensor([[1.0], [2.0]])
    for backend in ("dgl", "torch"):
        prop = build_propagator(2, 2, edges, backend=backend, norm="none", names=["zz", "aa", "mm"])
        p_u, p_i = prop(h_user, h_item)
        assert p_u[:, :, 0].tolist() == [[1.0, 0.0], [0.0, 3.0], [0.0, 0.0]]
        assert p_i[:, :, 0].tolist() == [[1.0, 0.0], [10.0, 10.0], [0.0, 0.0]]


@pytest.mark.parametrize("activation", ["prelu", "sigmoid"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("graph", GRAPHS, ids=[g[0] for g in GRAPHS])
def test_cml_forward_and_gradients_equal_across_backends(graph, norm, activation):
    _, n_users, n_items, edges, names = graph
    K = len(edges)
    models, grads, outs = {}, {}, {}
    torch.manual_seed(1)
    ref = None
    for backend in ("dgl", "torch"):
        prop = build_propagator(n_users, n_items, edges, backend=backend, norm=norm, names=names)
        model = CML(n_users, n_items, K, prop, dim=8, n_layers=3, activation=activation)
        if ref is None:
            ref = model.state_dict()
            gen = torch.Generator().manual_seed(2)
            coef = [torch.randn(s, generator=gen) for s in
                    [(n_users, 8), (n_items, 8), (K, n_users, 8), (K, n_items, 8)]]
        else:
            model.load_state_dict(ref)
        out = model()
        loss = sum((c * t).sum() for c, t in zip(coef, (out.user, out.item, out.user_beh, out.item_beh)))
        loss.backward()
        models[backend] = model
        outs[backend] = out
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for field in ("user", "item", "user_beh", "item_beh"):
        torch.testing.assert_close(getattr(outs["dgl"], field), getattr(outs["torch"], field), atol=1e-5, rtol=1e-5)
    assert grads["dgl"].keys() == grads["torch"].keys()
    for name, g in grads["dgl"].items():
        assert g.abs().sum() > 0 or name.startswith(("user_act", "item_act")), name
        torch.testing.assert_close(g, grads["torch"][name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("graph", GRAPHS, ids=[g[0] for g in GRAPHS])
def test_dgl_backend_float64_gradients_are_exact(graph, norm):
    """The cached degree scalings exist per dtype, and the backward through the in-place destination
    scaling matches finite differences and the torch backend in float64."""
    _, n_users, n_items, edges, names = graph
    torch.manual_seed(4)
    h_user = torch.randn(n_users, 3, dtype=torch.float64, requires_grad=True)
    h_item = torch.randn(n_items, 3, dtype=torch.float64, requires_grad=True)
    props = {b: build_propagator(n_users, n_items, edges, backend=b, norm=norm, names=names) for b in ("dgl", "torch")}
    assert torch.autograd.gradcheck(lambda u, i: props["dgl"](u, i), (h_user, h_item))
    coef = [torch.randn(len(edges), n, 3, dtype=torch.float64) for n in (n_users, n_items)]
    grads = {}
    for b, prop in props.items():
        p_u, p_i = prop(h_user, h_item)
        assert p_u.dtype == p_i.dtype == torch.float64
        grads[b] = torch.autograd.grad((coef[0] * p_u).sum() + (coef[1] * p_i).sum(), (h_user, h_item))
    for g_dgl, g_torch in zip(grads["dgl"], grads["torch"]):
        torch.testing.assert_close(g_dgl, g_torch, atol=1e-12, rtol=1e-12)


def test_dgl_backend_repeated_calls_leave_inputs_and_results_unchanged():
    """Scalings are cached per dtype and applied in place to fresh SpMM outputs only: a float64 call in
    between, or a backward pass, changes neither the inputs nor the next float32 result."""
    _, n_users, n_items, edges, names = GRAPHS[1]
    prop = build_propagator(n_users, n_items, edges, backend="dgl", norm="sym", names=names)
    torch.manual_seed(5)
    h_user = torch.randn(n_users, 4, requires_grad=True)
    h_item = torch.randn(n_items, 4, requires_grad=True)
    saved = h_user.detach().clone(), h_item.detach().clone()
    first = [t.detach().clone() for t in prop(h_user, h_item)]
    p64 = prop(h_user.detach().double(), h_item.detach().double())
    torch.testing.assert_close(p64[0].float(), first[0])
    p_u, p_i = prop(h_user, h_item)
    (p_u.sum() + p_i.sum()).backward()
    again = prop(h_user, h_item)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert torch.equal(h_user.detach(), saved[0]) and torch.equal(h_item.detach(), saved[1])


def test_dgl_backend_computes_with_torchs_thread_count():
    """DGL's kernels run on the system libgomp, which torch.set_num_threads does not reach; the
    propagator hands DGL torch's count at every call."""
    import dgl

    _, n_users, n_items, edges, names = GRAPHS[1]
    prop = build_propagator(n_users, n_items, edges, backend="dgl", norm="sym", names=names)
    h_user, h_item = torch.randn(n_users, 2), torch.randn(n_items, 2)
    before = torch.get_num_threads()
    try:
        for n in (2, 1, 3):
            torch.set_num_threads(n)
            prop(h_user, h_item)
            assert dgl.utils.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
        dgl.utils.set_num_threads(before)


@pytest.mark.parametrize("norm", NORMS)
def test_dgl_backend_is_heterograph_conv_over_the_behavior_relations(norm):
    """The product's contract: a heterograph of users, items and the behavior relations (and their
    reverses), one HeteroGraphConv module per relation, and the propagator's output is its output."""
    from dgl.nn import HeteroGraphConv

    _, n_users, n_items, edges, names = GRAPHS[1]
    prop = build_propagator(n_users, n_items, edges, backend="dgl", norm=norm, names=names)
    rels = {("user", n, "item") for n in names} | {("item", "rev_" + n, "user") for n in names}
    assert set(prop.graph.canonical_etypes) == rels
    assert [prop.graph.num_edges(("user", n, "item")) for n in names] == prop.n_edges
    assert isinstance(prop.conv, HeteroGraphConv) and set(prop.conv.mods) == {r[1] for r in rels}
    torch.manual_seed(6)
    h_user, h_item = torch.randn(n_users, 2), torch.randn(n_items, 2)
    direct = prop.conv(prop.graph, {"user": h_user, "item": h_item})
    p_u, p_i = prop(h_user, h_item)
    assert torch.equal(direct["user"], p_u) and torch.equal(direct["item"], p_i)


def _heterograph_conv_reference(prop, h_user, h_item):
    """What the propagator computes, as HeteroGraphConv runs it: one autograd node per operation."""
    out = prop.conv(prop.graph, {"user": h_user, "item": h_item})
    return out["user"], out["item"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("graph", GRAPHS, ids=[g[0] for g in GRAPHS])
def test_dgl_backend_fused_sides_match_heterograph_conv_bit_for_bit(graph, norm, dtype):
    """The propagator runs each side's relations in one autograd node; its outputs and the gradients
    it sends back equal HeteroGraphConv's per-operation autograd bit for bit, also where the inputs
    have other uses whose gradients the engine adds in the same buffers, and on every entry point."""
    _, n_users, n_items, edges, names = graph
    prop = build_propagator(n_users, n_items, edges, backend="dgl", norm=norm, names=names)
    gen = torch.Generator().manual_seed(9)
    h0 = [torch.randn(n, 6, generator=gen, dtype=dtype) for n in (n_users, n_items)]
    coef = [torch.randn(len(edges), n, 6, generator=gen, dtype=dtype) for n in (n_users, n_items)]

    def run(propagate):
        h_user, h_item = (h.clone().requires_grad_() for h in h0)
        a, b = h_user.sin(), h_item.cos()  # inputs with other uses before and after propagation
        p_u, p_i = propagate(a, b)
        loss = (a * a).sum() + (coef[0] * p_u).sum() + (coef[1] * p_i).sum() + (b ** 3).sum()
        loss.backward()
        return p_u.detach(), p_i.detach(), h_user.grad, h_item.grad

    ref = run(lambda u, i: _heterograph_conv_reference(prop, u, i))
    for propagate in (prop, lambda u, i: (prop.user_side(i), prop.item_side(u))):
        for a, b in zip(ref, run(propagate)):
            assert a.dtype == dtype and torch.equal(a, b)


def test_dgl_backend_fused_sides_skip_no_gradient_and_do_not_keep_graphs():
    """Inputs that need no gradient give outputs without a graph; under no_grad nothing is recorded."""
    _, n_users, n_items, edges, names = GRAPHS[0]
    prop = build_propagator(n_users, n_items, edges, backend="dgl", norm="sym", names=names)
    h_user, h_item = torch.randn(n_users, 4), torch.randn(n_items, 4, requires_grad=True)
    p_u, p_i = prop(h_user, h_item)
    assert p_u.requires_grad and not p_i.requires_grad
    with torch.no_grad():
        assert not prop.user_side(h_item).requires_grad


def test_propagator_for_dataset_merge_and_selection(tiny_dataset):
    ds = tiny_dataset
    K = ds.n_behaviors
    merged = propagator_for_dataset(ds, backend="torch", merge=True, norm="none")
    assert merged.n_behaviors == 1 and merged.names == ("view+cart+buy",)
    keys = np.unique(np.concatenate([u * ds.n_items + i for u, i in (ds.edges(k) for k in range(K))]))
    assert merged.n_edges == [len(keys)]
    h_item = torch.eye(ds.n_items)
    p_u, _ = merged(torch.zeros(ds.n_users, ds.n_items), h_item)
    dense = np.zeros((ds.n_users, ds.n_items))
    dense[keys // ds.n_items, keys % ds.n_items] = 1
    np.testing.assert_array_equal(p_u[0].numpy(), dense)
    target = propagator_for_dataset(ds, backend="torch", behaviors=[K - 1])
    assert target.names == (ds.target,) and target.n_edges == [len(ds.edges(K - 1)[0])]
    with pytest.raises(CmlError, match="behaviors"):
        propagator_for_dataset(ds, behaviors=[K])


def test_resolve_backend():
    assert resolve_backend("auto", "cpu") == "dgl"
    assert resolve_backend("dgl", torch.device("cpu")) == "dgl"
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("torch", "cuda:0") == "torch"
    with pytest.raises(CmlError, match="CPU only"):
        resolve_backend("dgl", "cuda")
    with pytest.raises(CmlError, match="unknown message-passing backend"):
        resolve_backend("mkl", "cpu")
    with pytest.raises(CmlError, match="invalid device"):
        resolve_backend("auto", "gpu7")


def test_bad_graph_input_is_a_clear_error():
    with pytest.raises(CmlError, match="item ids outside"):
        build_propagator(2, 2, [(np.array([0]), np.array([2]))], backend="torch")
    with pytest.raises(CmlError, match="distinct"):
        prepare_relations(2, 2, [(np.array([0]), np.array([1]))] * 2, names=["a", "a"])
    with pytest.raises(CmlError, match="normalisation"):
        build_propagator(2, 2, [(np.array([0]), np.array([1]))], backend="torch", norm="rw")
    prop = build_propagator(2, 2, [(np.array([0]), np.array([1]))], backend="torch")
    with pytest.raises(CmlError, match="expects features of shape"):
        prop(torch.zeros(3, 4), torch.zeros(2, 4))
