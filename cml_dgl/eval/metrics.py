"""Ranking metrics for one relevant item per user, with explicit tie handling.

Each user has one held-out positive and a candidate set. All that matters for the metrics is the
positive's 0-based rank ``r`` among the candidates, which the scores fix only up to ties:

    g = #{candidates scoring strictly above the positive}      (``n_greater``)
    t = #{other candidates scoring exactly as the positive}    (``n_tied``)
    r ∈ {g, g+1, ..., g+t}

Per user, with one relevant item (so IDCG = 1 and Recall@k = HR@k):

    HR@k = Recall@k = [r < k]      NDCG@k = [r < k] / log2(r + 2)      MRR = 1 / (r + 1)

Tie rules (how r is chosen inside ``[g, g+t]``):

``expected`` (default)
    The exact expectation of each metric over a uniformly random order of the positive among the
    items it ties with, i.e. the mean of the metric over r = g..g+t. Deterministic and gives no
    credit for luck: when all 1+99 candidates tie, HR@10 = 10/100 exactly.
``random``
    One draw r ~ U{g, ..., g+t} from a seeded generator.
``pessimistic``
    r = g + t: the positive is ranked after all its ties.
``optimistic``
    r = g: the positive is ranked before all its ties. This is what a ``torch.topk`` evaluation can
    give by luck when cold items share one embedding; offered only to reproduce such figures.

The expectation is computed in closed form, vectorised over users:

    E[HR@k]   = clip(k - g, 0, t + 1) / (t + 1)
    E[NDCG@k] = (C(min(g+t+1, k)) - C(min(g, k))) / (t + 1),   C(n) = Σ_{r<n} 1/log2(r+2)
    E[MRR]    = (H(g+t+1) - H(g)) / (t + 1),                     H(n) = Σ_{r<n} 1/(r+1) = ψ(n+1) + γ
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from cml_dgl.errors import CmlError


def _digamma_torch(x: np.ndarray) -> np.ndarray:
    """ψ(x) in float64 by torch, for machines without scipy (agrees with scipy to ~1e-15)."""
    return torch.special.digamma(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


try:
    from scipy.special import digamma
except ImportError:  # scipy is optional for training and sampled evaluation (e.g. a bare GPU image)
    digamma = _digamma_torch

TIE_RULES: tuple[str, ...] = ("expected", "random", "pessimistic", "optimistic")


def _to_numpy_int(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.int64).reshape(-1)


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Validate cut-offs: a non-empty sequence of positive integers."""
    try:
        out = tuple(int(k) for k in ks)
    except (TypeError, ValueError):
        out = ()
    if not out or any(k < 1 for k in out) or any(a != b for a, b in zip(out, ks)):
        raise CmlError(f"ks must be positive integers, got {tuple(ks)!r}")
    return out


def check_tie_rule(tie_rule: str) -> str:
    if tie_rule not in TIE_RULES:
        raise CmlError(f"unknown tie rule {tie_rule!r}; expected one of {TIE_RULES}")
    return tie_rule


def positive_rank_bounds(pos_scores: Any, neg_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Count, per user, the negatives scoring strictly above and exactly equal to the positive.

    ``pos_scores`` (n,) and ``neg_scores`` (n, m), numpy or torch (compared on their device).
    Returns ``(n_greater, n_tied)`` as int64 numpy arrays of shape (n,); the positive's rank
    lies in ``[n_greater, n_greater + n_tied]``.
    """
    if isinstance(pos_scores, torch.Tensor) or isinstance(neg_scores, torch.Tensor):
        pos = torch.as_tensor(pos_scores)
        neg = torch.as_tensor(neg_scores, device=pos.device)
        if neg.ndim != 2 or pos.shape != neg.shape[:1]:
            raise ValueError(f"expected pos (n,) and neg (n, m), got {tuple(pos.shape)} and {tuple(neg.shape)}")
        col = pos.unsqueeze(1)
        return _to_numpy_int((neg > col).sum(1)), _to_numpy_int((neg == col).sum(1))
    pos = np.asarray(pos_scores)
    neg = np.asarray(neg_scores)
    if neg.ndim != 2 or pos.shape != neg.shape[:1]:
        raise ValueError(f"expected pos (n,) and neg (n, m), got {pos.shape} and {neg.shape}")
    col = pos[:, None]
    return (neg > col).sum(1).astype(np.int64), (neg == col).sum(1).astype(np.int64)


def _rank_interval(g: np.ndarray, t: np.ndarray, tie_rule: str,
                   rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """The interval [lo, lo+width-1] of ranks averaged over; a single rank for all but 'expected'."""
    if tie_rule == "expected":
        return g, t + 1
    one = np.ones_like(g)
    if tie_rule == "pessimistic":
        return g + t, one
    if tie_rule == "optimistic":
        return g, one
    rng = np.random.default_rng(0) if rng is None else rng
    return g + rng.integers(0, t + 1), one


def _discount_prefix(k: int) -> np.ndarray:
    """C(n) = Σ_{r<n} 1/log2(r+2) for n = 0..k."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0))])


def _mean_reciprocal(lo: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Mean of 1/(r+1) over r = lo..lo+width-1, exact for width 1, via ψ otherwise."""
    single = 1.0 / (lo + 1.0)
    many = (digamma(lo + width + 1.0) - digamma(lo + 1.0)) / width
    return np.where(width == 1, single, many)


def per_user_metrics(n_greater: Any, n_tied: Any, ks: Sequence[int], tie_rule: str = "expected",
                     rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Per-user HR@k, NDCG@k, Recall@k for each k and MRR, as float64 arrays of shape (n,).

    See the module docstring for the formulas and tie rules; ``rng`` is used by ``random`` only
    (a generator seeded with 0 when omitted).
    """
    ks = check_ks(ks)
    check_tie_rule(tie_rule)
    g = _to_numpy_int(n_greater)
    t = _to_numpy_int(n_tied)
    if g.shape != t.shape:
        raise ValueError(f"n_greater {g.shape} and n_tied {t.shape} differ in shape")
    if g.size and (g.min() < 0 or t.min() < 0):
        raise ValueError("n_greater and n_tied must be non-negative")
    lo, width = _rank_interval(g, t, tie_rule, rng)
    wf = width.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hr = np.clip(k - lo, 0, width) / wf
        c = _discount_prefix(k)
        ndcg = (c[np.minimum(lo + width, k)] - c[np.minimum(lo, k)]) / wf
        out[f"hr@{k}"] = hr
        out[f"ndcg@{k}"] = ndcg
        out[f"recall@{k}"] = hr.copy()
    out["mrr"] = _mean_reciprocal(lo, width)
    return out


def metrics_from_bounds(n_greater: Any, n_tied: Any, ks: Sequence[int], tie_rule: str = "expected",
                        rng: np.random.Generator | None = None) -> dict[str, float]:
    """Mean over users of :func:`per_user_metrics`: keys ``hr@k``, ``ndcg@k``, ``recall@k``, ``mrr``."""
    per_user = per_user_metrics(n_greater, n_tied, ks, tie_rule, rng)
    n = len(per_user["mrr"])
    if n == 0:
        raise ValueError("no users to evaluate")
    return {name: float(values.mean()) for name, values in per_user.items()}
