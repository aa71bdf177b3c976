"""The two speed options change only the rounding (issue 16): ``merged_item_mean`` (the items' mean
over behaviors as one product with (1/K) Σ_k Â_k^T) and ``used_view_rows`` (training computes the
behavior-specific user views at the rows the losses read). Off, the model is the plain one
(bitwise: tests/test_step_exact.py); on, every value agrees with it to float rounding and training
is as deterministic. They act on the paper's encoder (``--preset paper``); the default model's
linear, merged layers give them nothing to change."""

from __future__ import annotations

import pytest
import torch

from cml_dgl.graph.backends import propagator_for_dataset, resolve_backend
from cml_dgl.models.cml import CML, UserViews
from cml_dgl.models.cml_loss import CMLBatch
from cml_dgl.train import config
from cml_dgl.train.draws.types import DeviceTriples
from cml_dgl.train.trainer import Trainer
from conftest import make_tiny_dataset, metrics_rows

BACKENDS = ["torch", pytest.param("dgl", marks=pytest.mark.skipif(
    resolve_backend("auto", "cpu") != "dgl", reason="DGL 2.1 does not import here"))]
OPTIONS = [("merged_item_mean",), ("used_view_rows",), ("merged_item_mean", "used_view_rows")]
#: the default before issue 13: the paper's encoder, d = 16, the authors' Retailrocket rates
BEFORE = ["dim=16", "opt_base_lr=0.0001", "opt_max_lr=0.001"]


def _model(ds, backend, options, norm="sym", activation="prelu"):
    cfg = config.resolve(presets=["paper"], overrides=[f"backend={backend}", "device=cpu", f"norm={norm}",
                                                       f"activation={activation}"] + [f"{o}=true" for o in options])
    torch.manual_seed(0)
    return CML.from_config(ds, cfg, torch.device("cpu")), cfg


def _batch(ds, g):
    triples = []
    for k in range(ds.n_behaviors):
        u, i = (torch.from_numpy(x) for x in ds.edges(k))
        pick = torch.randint(0, len(u), (50,), generator=g)
        triples.append(DeviceTriples(u[pick], i[pick], torch.randint(0, ds.n_items, (50,), generator=g)))
    return triples, triples[-1].users[:20]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_items_mean_product_is_the_mean_of_the_behavior_products(backend):
    ds = make_tiny_dataset(n_users=50, n_items=70, seed=1)
    for norm in ("sym", "none"):
        prop = propagator_for_dataset(ds, backend=backend, norm=norm)
        h = torch.randn(ds.n_users, 8, dtype=torch.float64, requires_grad=True)
        g = torch.randn(ds.n_items, 8, dtype=torch.float64)
        merged, = torch.autograd.grad((prop.item_mean(h) * g).sum(), h)
        stacked, = torch.autograd.grad((prop.item_side(h).mean(0) * g).sum(), h)
        torch.testing.assert_close(prop.item_mean(h), prop.item_side(h).mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(merged, stacked, rtol=1e-12, atol=1e-12)
        hu, hi = torch.randn(ds.n_users, 8), torch.randn(ds.n_items, 8)
        both = prop(hu, hi)
        assert torch.equal(prop.user_side(hi), both[0]) and torch.equal(prop.item_side(hu), both[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("activation", ["prelu", "sigmoid"])
def test_options_give_the_plain_objective_and_gradients_to_rounding(backend, options, activation):
    ds = make_tiny_dataset(n_users=60, n_items=80, seed=2)
    plain, cfg = _model(ds, backend, (), activation=activation)
    fast, _ = _model(ds, backend, options, activation=activation)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), fast.state_dict().values()))
    triples, cl = _batch(ds, torch.Generator().manual_seed(3))
    out_p, out_f = plain(item_behavior=False), fast(item_behavior=False)
    assert isinstance(out_f.user_beh, UserViews) == ("used_view_rows" in options)
    for k in range(ds.n_behaviors):
        torch.testing.assert_close(out_f.user_beh[k], out_p.user_beh[k], rtol=1e-5, atol=1e-6)
    if "used_view_rows" in options:
        got = out_f.user_beh.rows([(k, triples[k].users) for k in range(ds.n_behaviors)])
        for k, rows in enumerate(got):
            torch.testing.assert_close(rows, out_p.user_beh[k][triples[k].users], rtol=1e-5, atol=1e-6)
    for weigh in ("grad", "nograd", "none"):
        torch.manual_seed(7)  # the meta network's dropout: the same masks for both
        state = torch.get_rng_state()
        obj_p, logs_p = plain.objective(plain(item_behavior=False), CMLBatch(triples, cl, weigh))
        gp = torch.autograd.grad(obj_p, list(plain.parameters()))
        torch.set_rng_state(state)
        obj_f, logs_f = fast.objective(fast(item_behavior=False), CMLBatch(triples, cl, weigh))
        gf = torch.autograd.grad(obj_f, list(fast.parameters()))
        torch.testing.assert_close(obj_f, obj_p, rtol=1e-5, atol=1e-7)
        for a, b in zip(gf, gp):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(fast.embeddings(), plain.embeddings()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _fit(ds, run, overrides, presets=("paper",)):
    cfg = config.resolve(presets=list(presets), overrides=(BEFORE if presets else []) + ["batch_size=32", "meta_batch=8", "meta_samples=4", "epochs=3", "device=cpu",
                                    "patience=100"] + overrides)
    tr = Trainer(ds, cfg, run, quiet=True)
    tr.prepare_run_dir(overwrite=True)
    tr.fit()
    return [{k: r[k] for k in ("losses", "valid")} for r in metrics_rows(run)], tr


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_with_both_options_follows_plain_training_and_is_deterministic(tmp_path, backend):
    ds = make_tiny_dataset(n_users=40, n_items=60, seed=5)
    on = [f"backend={backend}", "merged_item_mean=true", "used_view_rows=true"]
    a, tr_a = _fit(ds, tmp_path / "a", on)
    b, _ = _fit(ds, tmp_path / "b", on)
    plain, tr_p = _fit(ds, tmp_path / "plain", [f"backend={backend}"])
    assert a == b, "same seed, same run"
    assert a != plain, "the options do change the rounding"
    for ra, rp in zip(a, plain):
        for part in ("losses", "valid"):
            for key in rp[part]:
                assert ra[part][key] == pytest.approx(rp[part][key], rel=1e-3, abs=1e-4), (part, key)
    for x, y in zip(tr_a.model.state_dict().values(), tr_p.model.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-4)


def test_under_the_default_model_the_options_change_nothing(tmp_path):
    """Linear layers and the merged fusion leave the options nothing to reorder: the items' fused
    layer is already one product, and the views at the used rows are the same sums."""
    ds = make_tiny_dataset(n_users=40, n_items=60, seed=5)

    def fit_both(draws):
        on, tr_on = _fit(ds, tmp_path / f"on-{draws}", ["backend=torch", "merged_item_mean=true", "used_view_rows=true",
                                                        f"aux_draws={draws}"], presets=())
        off, tr_off = _fit(ds, tmp_path / f"off-{draws}", ["backend=torch", f"aux_draws={draws}"], presets=())
        assert tr_on.cfg["fusion"] == "merged"
        return on, off, zip(tr_on.model.state_dict().values(), tr_off.model.state_dict().values())

    # bit for bit with one auxiliary draw per purchase
    on, off, params = fit_both("target")
    assert on == off
    for x, y in params:
        assert torch.equal(x, y)
    # with every auxiliary edge (the default) the views at the used rows are summed in another order:
    # equal to rounding
    on, off, params = fit_both("edges")
    for ra, rb in zip(on, off, strict=True):
        for part in ("losses", "valid"):
            assert ra[part] == pytest.approx(rb[part], rel=1e-6, abs=1e-7), part
    for x, y in params:
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
