"""The training step's shortcuts give exactly the values of the plain computation (issue 16).

* ``MetaStep.step`` runs one forward pass of θ for phases 1 and 3 and the phase-2 clone without an
  autograd graph; ``plain_step`` below is the step written out as three full passes, each with its
  own graph (the code before the shortcut). Same seed, same draws: the losses, metrics, parameters
  and optimiser states must be bitwise equal.
* The torch backend's products (32-bit indices, an uninitialised output) equal
  ``torch.sparse.mm`` on 64-bit CSR matrices bitwise, forward and backward.
"""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from cml_dgl.graph.backends import TorchPropagator, resolve_backend
from cml_dgl.graph.build import prepare_relations
from cml_dgl.models.cml_loss import CMLBatch
from cml_dgl.train import config
from cml_dgl.train.strategies import _accumulate
from cml_dgl.train.trainer import Trainer
from conftest import make_tiny_dataset, metrics_rows

SMALL = ["batch_size=32", "meta_batch=8", "meta_samples=4", "epochs=3", "patience=100"]


def plain_step(self, step, sums, timer) -> None:
    """Phase 1: clone θ' forward + backward; phase 2: θ' forward + backward again (graph kept,
    though only φ steps); phase 3: θ forward + backward."""
    cfg, model = self.cfg, self.model
    use_meta = self.meta is not None
    if use_meta:
        self.meta.train()
        clone = model.clone()
        clone_opt = torch.optim.AdamW(clone.parameters(), lr=cfg["lr_clone"], weight_decay=cfg["opt_weight_decay"])
        obj, _ = clone.loss(CMLBatch(step.triples, step.cl_clone, "grad"))
        self.meta_opt.zero_grad(set_to_none=True)
        obj.backward()
        if cfg["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(self.meta.parameters(), cfg["grad_clip"])
        self._clip_step(clone_opt, list(clone.parameters()))
        self.meta_opt.step()
        meta_obj, _ = clone.loss(CMLBatch(step.meta_triples, step.cl_meta, "grad"))
        self.meta_opt.zero_grad(set_to_none=True)
        (0.5 * meta_obj).backward()
        self._clip_step(self.meta_opt, list(self.meta.parameters()))
        _accumulate(sums, "meta", meta_obj.detach().double())
    obj, logs = model.objective(model(item_behavior=False),
                                CMLBatch(step.triples, step.cl_main, "nograd" if use_meta else "none"))
    self.opt.zero_grad(set_to_none=True)
    obj.backward()
    self._clip_step(self.opt, list(model.parameters()))
    _accumulate(sums, "total", obj.detach().double())
    for key, v in logs.items():
        _accumulate(sums, key, v)


def _train(ds, run_dir, overrides, presets=(), plain=False) -> Trainer:
    cfg = config.resolve(presets=list(presets), overrides=SMALL + ["device=cpu"] + overrides)
    tr = Trainer(ds, cfg, run_dir, quiet=True)
    if plain:
        tr.strategy.step = types.MethodType(plain_step, tr.strategy)
    tr.prepare_run_dir(overwrite=True)
    tr.fit()
    return tr


def _state(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    if tr.model.meta is not None:
        out.update({f"meta.{k}": v for k, v in tr.model.meta.state_dict().items()})
    for name in ("opt", "meta_opt"):
        opt = getattr(tr.strategy, name)
        if opt is not None:
            for i, st in opt.state_dict()["state"].items():
                out.update({f"{name}.{i}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return out


def _without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "timings")} for r in rows]


BACKENDS = ["torch", pytest.param("dgl", marks=pytest.mark.skipif(
    resolve_backend("auto", "cpu") != "dgl", reason="DGL 2.1 does not import here"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("presets, overrides", [
    ((), []),
    (("official",), []),
    ((), ["variant=no-mke"]),
    ((), ["variant=no-meta"]),
    ((), ["meta_detach_loss=false", "meta_eval_weights=false", "cl_include_target=true"]),
])
def test_the_step_equals_three_plain_passes(tmp_path, backend, presets, overrides):
    ds = make_tiny_dataset(n_users=40, n_items=60, seed=5)
    ov = [f"backend={backend}"] + overrides
    fast = _train(ds, tmp_path / "fast", ov, presets)
    plain = _train(ds, tmp_path / "plain", ov, presets, plain=True)
    a, b = metrics_rows(tmp_path / "fast"), metrics_rows(tmp_path / "plain")
    assert len(a) == 3 and _without_times(a) == _without_times(b)
    sa, sb = _state(fast), _state(plain)
    assert sa.keys() == sb.keys() and len(sa) > 10
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    other = _train(ds, tmp_path / "other", ov + ["seed=9"], presets)
    assert not torch.equal(_state(other)["model.user_emb"], sa["model.user_emb"]), "the comparison can fail"


def _dense_int64_reference(m: torch.Tensor) -> torch.Tensor:
    return torch.sparse_csr_tensor(m.crow_indices().long(), m.col_indices().long(), m.values(), m.shape)


@pytest.mark.parametrize("norm", ["sym", "none"])
def test_torch_products_equal_sparse_mm_on_64_bit_csr(norm):
    ds = make_tiny_dataset(n_users=70, n_items=90, seed=2, density=0.4)
    rel = prepare_relations(ds.n_users, ds.n_items, [ds.edges(k) for k in range(ds.n_behaviors)])
    prop = TorchPropagator(rel, norm, torch.device("cpu"))
    mats = prop._matrices(torch.float32)
    assert all(m.col_indices().dtype == torch.int32 for m in mats.values())
    g = torch.Generator().manual_seed(0)
    hu = torch.randn(ds.n_users, 16, generator=g, requires_grad=True)
    hi = torch.randn(ds.n_items, 16, generator=g, requires_grad=True)
    pu, pi = prop(hu, hi)
    wu, wi = torch.randn(pu.shape, generator=g), torch.randn(pi.shape, generator=g)
    ((pu * wu).sum() + (pi * wi).sum()).backward()
    ref = {k: _dense_int64_reference(m) for k, m in mats.items()}
    K = ds.n_behaviors
    assert torch.equal(pu, torch.sparse.mm(ref["ui"], hi.detach()).view(K, ds.n_users, -1))
    assert torch.equal(pi, torch.sparse.mm(ref["iu"], hu.detach()).view(K, ds.n_items, -1))
    assert torch.equal(hi.grad, torch.sparse.mm(ref["ui_t"], wu.reshape(-1, 16)))
    assert torch.equal(hu.grad, torch.sparse.mm(ref["iu_t"], wi.reshape(-1, 16)))
    assert pu.abs().sum() > 0 and hu.grad.abs().sum() > 0


@pytest.mark.parametrize("k", [1, 3, 4])
def test_behavior_mean_gives_autograds_values_without_writing_k_copies(k):
    """``behavior_mean`` equals ``x.mean(0)`` bit for bit, and so does the gradient it sends back,
    also where ``x`` has other uses that the engine adds to it; alone, that gradient is a broadcast
    view of one (n, d) tensor (stride 0 over the behaviors), not K written copies."""
    from cml_dgl.models.cml import behavior_mean

    gen = torch.Generator().manual_seed(11)
    x0 = torch.randn(k, 7, 5, generator=gen)
    w = torch.randn(7, 5, generator=gen)
    results = []
    for mean in (lambda x: x.mean(0), behavior_mean):
        x = x0.clone().requires_grad_()
        y = torch.sigmoid(x)
        out = mean(y)
        ((out * w).sum() + (y ** 2).sum()).backward()
        results.append((out.detach(), x.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    x = x0.clone().requires_grad_()
    (grad,) = torch.autograd.grad((behavior_mean(x) * w).sum(), x)
    assert (k == 1 or grad.stride(0) == 0) and torch.equal(grad, (w / k).expand(k, 7, 5))
