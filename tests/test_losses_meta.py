"""BPR and contrastive losses against direct formulas; the meta weight network's contract."""

from __future__ import annotations

import math

import pytest
import torch

from cml_dgl.errors import CmlError
from cml_dgl.models import MetaWeightNet, bpr_loss, contrastive_loss
from cml_dgl.models.losses import contrastive_log_mask


def test_bpr_matches_formula_and_is_stable():
    pos = torch.tensor([2.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    neg = torch.tensor([1.0, 1.0, 0.5, -3.0], dtype=torch.float64)
    want = torch.tensor([-math.log(1 / (1 + math.exp(-(p - n)))) for p, n in zip(pos.tolist(), neg.tolist())],
                        dtype=torch.float64)
    torch.testing.assert_close(bpr_loss(pos, neg), want)
    far = bpr_loss(torch.tensor([-300.0, 300.0], requires_grad=True), torch.tensor([300.0, -300.0]))
    assert torch.isfinite(far).all() and far[0].item() == pytest.approx(600.0) and far[1].item() < 1e-30


def _views(n_users=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_users, d, generator=g, dtype=torch.float64), torch.randn(n_users, d, generator=g,
                                                                                    dtype=torch.float64)


def _sim(a, b, similarity):
    if similarity == "cosine":
        return float(a @ b / (a.norm() * b.norm()))
    return float(a @ b)


def _loop_paper(za, zv, users, tau, similarity):
    out = []
    for p, u in enumerate(users):
        num = math.exp(_sim(za[u], zv[u], similarity) / tau)
        den = sum(math.exp(_sim(za[u], zv[v], similarity) / tau) for q, v in enumerate(users) if q == p or v != u)
        out.append(-math.log(num / den))
    return torch.tensor(out, dtype=torch.float64)


def _loop_official(za, zv, users, tau, similarity, chunk_size):
    """Spec 3.2 literally, with Python sets: negatives = set(S) minus the anchor's chunk's users."""
    chunk_size = chunk_size or 1
    out = []
    for start in range(0, len(users), chunk_size):
        chunk = users[start:start + chunk_size]
        negs = set(users) - set(chunk)
        for u in chunk:
            pos = math.exp(_sim(za[u], zv[u], similarity) / tau)
            neg = sum(math.exp(_sim(za[u], zv[v], similarity) / tau) for v in negs)
            out.append(-math.log(pos / (neg + 1e-8) + 1e-8))
    return torch.tensor(out, dtype=torch.float64)


USERS = [3, 0, 5, 3, 6, 1, 2, 0, 4]  # duplicates on purpose (users repeat in a BPR batch)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("duplicates", [False, True])
def test_infonce_paper_matches_loop(similarity, duplicates):
    za, zv = _views()
    users = USERS if duplicates else list(range(7))
    idx = torch.tensor(users)
    got = contrastive_loss(za[idx], zv[idx], temperature=0.7, similarity=similarity, variant="paper",
                           users=idx if duplicates else None)
    torch.testing.assert_close(got, _loop_paper(za, zv, users, 0.7, similarity))


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("chunk_size", [None, 1, 2, 4, 9, 20])
def test_contrastive_official_matches_loop(similarity, chunk_size):
    za, zv = _views()
    idx = torch.tensor(USERS)
    got = contrastive_loss(za[idx], zv[idx], temperature=5.0, similarity=similarity, variant="official",
                           chunk_size=chunk_size, users=idx)
    torch.testing.assert_close(got, _loop_official(za, zv, USERS, 5.0, similarity, chunk_size))


def _masked_fill_form(anchor, view, tau, variant, chunk_size, users):
    """The loss as written before the additive mask: logits masked with -inf."""
    from cml_dgl.models.losses import _LOG_EPS, _official_negatives

    n = anchor.shape[0]
    logits = (anchor @ view.T) / tau
    pos = logits.diagonal()
    if variant == "paper":
        same = users[:, None] == users[None, :]
        same.fill_diagonal_(False)
        return torch.logsumexp(logits.masked_fill(same, float("-inf")), dim=1) - pos
    neg = _official_negatives(users, chunk_size)
    log_neg = torch.logsumexp(torch.cat([logits.masked_fill(~neg, float("-inf")),
                                         logits.new_full((n, 1), _LOG_EPS)], 1), dim=1)
    return -torch.logaddexp(pos - log_neg, torch.full_like(pos, _LOG_EPS))


@pytest.mark.parametrize("variant, chunk_size", [("paper", None), ("official", 1), ("official", 3)])
def test_the_additive_mask_gives_the_masked_losses_and_gradients_bitwise(variant, chunk_size):
    """One mask per contrast sample, shared by its views (issue 16), changes no bit."""
    g = torch.Generator().manual_seed(4)
    users = torch.randint(0, 40, (120,), generator=g)
    a, v = (torch.randn(120, 16, generator=g, requires_grad=True) for _ in range(2))
    w = torch.randn(120, generator=g)
    mask = contrastive_log_mask(120, users, variant=variant, chunk_size=chunk_size)
    got = contrastive_loss(a, v, temperature=16.0, variant=variant, chunk_size=chunk_size, users=users,
                           log_mask=mask)
    grads = torch.autograd.grad((got * w).sum(), (a, v))
    want = _masked_fill_form(a, v, 16.0, variant, chunk_size or 1, users)
    want_grads = torch.autograd.grad((want * w).sum(), (a, v))
    assert torch.equal(got, want) and all(torch.equal(x, y) for x, y in zip(grads, want_grads))
    assert torch.isinf(mask).any() and (mask == 0).any()
    assert torch.equal(contrastive_loss(a, v, temperature=16.0, variant=variant, chunk_size=chunk_size,
                                        users=users), got)
    with pytest.raises(CmlError, match="log_mask must have shape"):
        contrastive_loss(a, v, temperature=16.0, variant=variant, users=users, log_mask=mask[:5])


def test_official_without_negatives_is_the_codes_unbounded_value():
    """One chunk holding everyone (spec B3): loss = -s/τ - ln(1e8), finite gradients."""
    za, zv = _views()
    a = (za * 30).requires_grad_()
    loss = contrastive_loss(a, zv, temperature=16.0, variant="official", chunk_size=50)
    s = (a * zv).sum(1) / 16.0
    torch.testing.assert_close(loss, -s - math.log(1e8))
    loss.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_contrastive_is_stable_for_large_logits():
    za, zv = _views()
    for variant in ("paper", "official"):
        a = (za * 1e3).float().requires_grad_()
        loss = contrastive_loss(a, (zv * 1e3).float(), temperature=0.1, variant=variant, chunk_size=2)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(a.grad).all(), variant


def test_contrastive_rejects_bad_arguments():
    za, zv = _views()
    with pytest.raises(CmlError, match="temperature"):
        contrastive_loss(za, zv, temperature=0.0)
    with pytest.raises(CmlError, match="variant"):
        contrastive_loss(za, zv, temperature=1.0, variant="simclr")
    with pytest.raises(CmlError, match="shape"):
        contrastive_loss(za, zv[:3], temperature=1.0)
    assert contrastive_loss(za[:0], zv[:0], temperature=1.0).shape == (0,)


def _meta_inputs(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g) * 3, torch.randn(n, d, generator=g), torch.randn(n, d, generator=g))


@pytest.mark.parametrize("training", [True, False])
def test_meta_weight_ranges(training):
    torch.manual_seed(0)
    net = MetaWeightNet(dim=8).train(training)
    loss, zb, zf = _meta_inputs(64)
    w_cl = net.cl_weights(loss, zb, zf, 1)
    w_bpr = net.bpr_weights(loss, zf, zb, 1)
    assert w_cl.shape == w_bpr.shape == (64,)
    assert ((w_cl > 0) & (w_cl < 1)).all()
    assert ((w_bpr > 0) & (w_bpr < 2)).all() and w_bpr.max() > 1
    assert w_cl.std() > 0 and w_bpr.std() > 0  # personalised
    half = MetaWeightNet(dim=8, halve_bpr=True).train(training)
    half.load_state_dict(net.state_dict())
    torch.manual_seed(1)
    w_full = net.bpr_weights(loss, zf, zb, 0)
    torch.manual_seed(1)
    torch.testing.assert_close(half.bpr_weights(loss, zf, zb, 0), w_full / 2)


def test_meta_dropout_only_in_training():
    torch.manual_seed(0)
    net = MetaWeightNet(dim=8)
    loss, zb, zf = _meta_inputs(32)
    assert not torch.equal(net.cl_weights(loss, zb, zf, 0), net.cl_weights(loss, zb, zf, 0))
    net.eval()
    torch.testing.assert_close(net.cl_weights(loss, zb, zf, 0), net.cl_weights(loss, zb, zf, 0))


@pytest.mark.parametrize("training", [True, False])
def test_meta_single_row_and_empty(training):
    net = MetaWeightNet(dim=8).train(training)
    loss, zb, zf = _meta_inputs(1)
    w = net.cl_weights(loss, zb, zf, 0)
    b = net.bpr_weights(loss, zf, zb, 0)
    assert w.shape == b.shape == (1,) and 0 < w.item() < 1 and 0 < b.item() < 2
    (w.sum() + b.sum()).backward()
    assert net.cl_layer1.weight.grad is not None
    loss, zb, zf = _meta_inputs(0)
    assert net.cl_weights(loss, zb, zf, 0).shape == (0,) and net.bpr_weights(loss, zf, zb, 0).shape == (0,)


def test_meta_detach_loss_option():
    loss, zb, zf = _meta_inputs(16)
    for detach in (True, False):
        torch.manual_seed(0)
        net = MetaWeightNet(dim=8, dropout=0.0, detach_loss=detach)
        x = loss.clone().requires_grad_()
        net.cl_weights(x, zb, zf, 0).sum().backward()
        assert (x.grad is None) == detach
        assert net.cl_layer3.weight.grad.abs().sum() > 0


def test_meta_without_mke_is_one_gate_per_behavior():
    net = MetaWeightNet(dim=8, mke=False, n_behaviors=3)
    assert {n for n, _ in net.named_parameters()} == {"cl_gate", "bpr_gate"}
    with torch.no_grad():
        net.cl_gate.copy_(torch.tensor([-1.0, 0.0, 2.0]))
        net.bpr_gate.copy_(torch.tensor([0.5, -0.5, 0.0]))
    loss, zb, zf = _meta_inputs(10)
    for k in range(3):
        w = net.cl_weights(loss, zb, zf, k)
        b = net.bpr_weights(loss, zf, zb, k)
        assert w.shape == b.shape == (10,)
        assert torch.all(w == w[0]) and torch.all(b == b[0])
        assert w[0].item() == pytest.approx(torch.sigmoid(net.cl_gate[k]).item())
        assert b[0].item() == pytest.approx(2 * torch.sigmoid(net.bpr_gate[k]).item())
    w0 = net.cl_weights(loss, zb, zf, 0)
    w0.sum().backward()
    assert net.cl_gate.grad[0] != 0 and net.cl_gate.grad[1] == 0
    with pytest.raises(CmlError, match="behavior index"):
        net.cl_weights(loss, zb, zf, 3)
    with pytest.raises(CmlError, match="n_behaviors"):
        MetaWeightNet(dim=8, mke=False)
