"""Sampled (1 + stored negatives) and full (all items, training items masked) ranking evaluation.

What is ranked is a :class:`~cml_dgl.models.base.Scorer`: the score rows of a model, read in
chunks of users (:func:`as_scorer` takes a model, a scorer, or a pair of embeddings, whose
scores are the dot products ``s(u, i) = <user_emb[u], item_emb[i]>`` in float32 on the
embeddings' device). Both protocols reduce each user to the pair ``(n_greater, n_tied)`` of
:func:`cml_dgl.eval.metrics.positive_rank_bounds` and then apply one tie rule, so the metrics
do not depend on how users are batched.

The positive's score is always read from the same score computation as its competitors
(a candidate row in the sampled protocol, a column of the chunk's score matrix in the full one),
so items with identical embeddings give bit-identical scores and their ties are seen as ties.

Every result also splits the users into two groups (:func:`seen_in_auxiliary`): ``seen``, whose
held-out item is among their own training items of an auxiliary (non-target) behavior (a viewed or
carted item later bought), and ``new``, the others; each with its count and metrics, the means of
the same per-user values as the whole.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cml_dgl.data.dataset import Dataset
from cml_dgl.errors import CmlError
from cml_dgl.eval.metrics import check_ks, check_tie_rule, metrics_from_bounds, per_user_metrics
from cml_dgl.models.base import Recommender, Scorer, embedding_scorer

if TYPE_CHECKING:  # scipy is imported where a mask is built: training and sampled evaluation run without it
    import scipy.sparse as sp

PROTOCOLS: tuple[str, ...] = ("sampled", "full")
MASKS: tuple[str, ...] = ("target", "all")
SPLITS: tuple[str, ...] = ("test", "valid")
GROUPS: tuple[str, ...] = ("seen", "new")

DEFAULT_MAX_CHUNK_ELEMS = 1 << 25
"""Score entries per chunk (32 Mi float32 = 128 MiB, plus a bool temporary of 32 MiB)."""


def as_scorer(source: Any) -> Scorer:
    """What to rank: a :class:`~cml_dgl.models.base.Recommender` (its :meth:`scorer`, one encoder
    pass; put it in eval mode first), a :class:`~cml_dgl.models.base.Scorer`, or a pair
    ``(user_emb, item_emb)`` of tensors or arrays (validated, float32)."""
    if isinstance(source, Recommender):
        return source.scorer()
    if isinstance(source, (tuple, list)):
        if len(source) != 2:
            raise CmlError(f"expected a model, a scorer or (user_emb, item_emb), got a sequence of {len(source)}")
        return embedding_scorer(*source)
    if all(hasattr(source, a) for a in ("n_users", "n_items", "score_users", "score", "entries_per_user")):
        return source
    raise CmlError(f"cannot rank with a {type(source).__name__}: expected a model, a scorer or (user_emb, item_emb)")


def _finite_positives(pos: torch.Tensor, lo: int) -> None:
    bad = ~torch.isfinite(pos.reshape(-1))
    if bool(bad.any()):
        row = lo + int(torch.nonzero(bad)[0, 0])
        raise CmlError(f"the model scores pair {row}'s positive as {float(pos.reshape(-1)[row - lo])} "
                       "(NaN or infinite scores: did training diverge?)")


def _pairs(pairs: Any) -> np.ndarray:
    arr = np.asarray(pairs.cpu() if isinstance(pairs, torch.Tensor) else pairs).astype(np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise CmlError(f"pairs must have shape (n, 2) of (user, item), got {arr.shape}")
    return arr


def _check_ids(name: str, ids: np.ndarray, bound: int) -> None:
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= bound):
        raise CmlError(f"{name} holds ids outside [0, {bound}) (embeddings of another dataset?)")


def _chunk_rows(budget: int, row_elems: int) -> int:
    if budget < 1:
        raise ValueError(f"max_chunk_elems must be >= 1, got {budget}")
    return max(1, budget // max(1, row_elems))


def sampled_rank_bounds(scorer: Any, pairs: Any, negatives: Any, *,
                        max_chunk_elems: int = DEFAULT_MAX_CHUNK_ELEMS) -> tuple[np.ndarray, np.ndarray]:
    """``(n_greater, n_tied)`` of each positive among its own row of ``negatives`` (n, m).

    ``scorer``: see :func:`as_scorer`. Users are batched so that a batch holds at most
    ``max_chunk_elems`` entries (embedding entries gathered, or score rows for models scored
    row by row). A negative equal to its row's positive is refused: it would tie with itself.
    """
    scorer = as_scorer(scorer)
    pairs = _pairs(pairs)
    negs = np.asarray(negatives.cpu() if isinstance(negatives, torch.Tensor) else negatives)
    if negs.ndim != 2 or len(negs) != len(pairs) or negs.dtype.kind not in "iu":
        raise CmlError(f"negatives must be integer ids with one row per pair, got {negs.dtype} {negs.shape} "
                       f"for {len(pairs)} pairs")
    _check_ids("pairs users", pairs[:, 0], scorer.n_users)
    _check_ids("pairs items", pairs[:, 1], scorer.n_items)
    _check_ids("negatives", negs, scorer.n_items)
    step = _chunk_rows(max_chunk_elems, scorer.entries_per_user(negs.shape[1] + 1))
    g = np.empty(len(pairs), dtype=np.int64)
    t = np.empty(len(pairs), dtype=np.int64)
    device = scorer.device
    with torch.no_grad():
        for lo in range(0, len(pairs), step):
            hi = min(lo + step, len(pairs))
            cands = np.concatenate([pairs[lo:hi, 1:], negs[lo:hi].astype(np.int64)], axis=1)
            bad = np.flatnonzero((cands[:, 1:] == cands[:, :1]).any(1))
            if bad.size:
                row = lo + int(bad[0])
                raise CmlError(f"negatives row {row} contains its own positive item {int(pairs[row, 1])}")
            users = torch.from_numpy(pairs[lo:hi, 0]).to(device)
            items = torch.from_numpy(cands).to(device)
            scores = scorer.score(users, items)
            pos = scores[:, :1]
            _finite_positives(pos, lo)
            g[lo:hi] = (scores[:, 1:] > pos).sum(1).cpu().numpy()
            t[lo:hi] = (scores[:, 1:] == pos).sum(1).cpu().numpy()
    return g, t


def _canonical_mask(mask_csr: Any, n_users: int, n_items: int) -> sp.csr_matrix:
    import scipy.sparse as sp

    m = sp.csr_matrix(mask_csr)
    if m.shape != (n_users, n_items):
        raise CmlError(f"mask has shape {m.shape}, expected (users, items) = ({n_users}, {n_items})")
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()
    return m


def full_rank_bounds(scorer: Any, pairs: Any, mask_csr: Any | None, *,
                     max_chunk_elems: int = DEFAULT_MAX_CHUNK_ELEMS, progress: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(n_greater, n_tied)`` of each positive among all items, less the user's masked items.

    ``scorer``: see :func:`as_scorer`. ``mask_csr``: users x items, its stored entries are the
    items excluded for that user (the positive itself is never excluded); ``None`` masks nothing.
    Users are processed in chunks of ``max(1, max_chunk_elems // n_items)`` rows (the scorer's
    score rows), so no users x items matrix is ever allocated (``progress``: a bar of the users
    ranked on stderr):

        g_u = #{i : s(u,i) > s(u,p)} - #{i ∈ M_u \\ {p} : s(u,i) > s(u,p)}
        t_u = #{i : s(u,i) = s(u,p)} - 1 - #{i ∈ M_u \\ {p} : s(u,i) = s(u,p)}
    """
    scorer = as_scorer(scorer)
    pairs = _pairs(pairs)
    n_users, n_items = scorer.n_users, scorer.n_items
    _check_ids("pairs users", pairs[:, 0], n_users)
    _check_ids("pairs items", pairs[:, 1], n_items)
    mask = None if mask_csr is None else _canonical_mask(mask_csr, n_users, n_items)
    step = _chunk_rows(max_chunk_elems, n_items)
    g = np.empty(len(pairs), dtype=np.int64)
    t = np.empty(len(pairs), dtype=np.int64)
    device = scorer.device
    with torch.no_grad(), tqdm(total=len(pairs), unit="user", desc="full ranking", file=sys.stderr,
                               disable=not progress, leave=False, mininterval=0.5) as bar:
        for lo in range(0, len(pairs), step):
            hi = min(lo + step, len(pairs))
            c = hi - lo
            users = pairs[lo:hi, 0]
            pos_items = pairs[lo:hi, 1]
            scores = scorer.score_users(torch.from_numpy(users).to(device))
            rows_t = torch.arange(c, device=device)
            pos = scores[rows_t, torch.from_numpy(pos_items).to(device)].unsqueeze(1)
            _finite_positives(pos, lo)
            greater = (scores > pos).sum(1)
            tied = (scores == pos).sum(1) - 1
            if mask is not None:
                sub = mask[users]
                rows = np.repeat(np.arange(c, dtype=np.int64), np.diff(sub.indptr))
                cols = sub.indices.astype(np.int64)
                keep = cols != pos_items[rows]
                if keep.any():
                    r = torch.from_numpy(rows[keep]).to(device)
                    ms = scores[r, torch.from_numpy(cols[keep]).to(device)]
                    greater -= torch.bincount(r[ms > pos[r, 0]], minlength=c)
                    tied -= torch.bincount(r[ms == pos[r, 0]], minlength=c)
            g[lo:hi] = greater.cpu().numpy()
            t[lo:hi] = tied.cpu().numpy()
            bar.update(c)
    return g, t


def evaluate_sampled(scorer: Any, pairs: Any, negatives: Any, ks: Sequence[int],
                     tie_rule: str = "expected", seed: int = 0, *,
                     max_chunk_elems: int = DEFAULT_MAX_CHUNK_ELEMS) -> dict[str, float]:
    """Metrics of each positive ranked among its stored negatives (see :mod:`cml_dgl.eval.metrics`)."""
    ks = check_ks(ks)
    check_tie_rule(tie_rule)
    g, t = sampled_rank_bounds(scorer, pairs, negatives, max_chunk_elems=max_chunk_elems)
    return metrics_from_bounds(g, t, ks, tie_rule, np.random.default_rng(seed))


def evaluate_full(scorer: Any, pairs: Any, mask_csr: Any | None, ks: Sequence[int],
                  tie_rule: str = "expected", seed: int = 0, *,
                  max_chunk_elems: int = DEFAULT_MAX_CHUNK_ELEMS, progress: bool = False) -> dict[str, float]:
    """Metrics of each positive ranked among all items, the user's ``mask_csr`` items excluded."""
    ks = check_ks(ks)
    check_tie_rule(tie_rule)
    g, t = full_rank_bounds(scorer, pairs, mask_csr, max_chunk_elems=max_chunk_elems, progress=progress)
    return metrics_from_bounds(g, t, ks, tie_rule, np.random.default_rng(seed))


def training_mask(ds: Dataset, mask: str = "target", split: str = "valid") -> sp.csr_matrix:
    """Users x items csr of the known items excluded by the full protocol.

    ``target``: the training edges of the target (last) behavior; ``all``: of every behavior.
    On the test split the user's validation purchase is a known purchase too, and is masked.
    """
    if mask not in MASKS:
        raise CmlError(f"unknown mask {mask!r}; expected one of {MASKS}")
    behaviors = [ds.n_behaviors - 1] if mask == "target" else range(ds.n_behaviors)
    users = [ds.edges(k)[0] for k in behaviors]
    items = [ds.edges(k)[1] for k in behaviors]
    if split == "test" and len(ds.valid):
        users.append(ds.valid[:, 0].astype(np.int64))
        items.append(ds.valid[:, 1].astype(np.int64))
    import scipy.sparse as sp

    u, i = np.concatenate(users), np.concatenate(items)
    m = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)), shape=(ds.n_users, ds.n_items))
    m.sum_duplicates()
    m.data[:] = 1
    return m


def seen_in_auxiliary(ds: Dataset, pairs: Any) -> np.ndarray:
    """Per (user, item) pair: whether the item is among the user's training items of an auxiliary
    (non-target) behavior. Only the dataset's training edges count, never a held-out pair."""
    from cml_dgl.data.split import pairs_in_behaviors

    found = pairs_in_behaviors(ds.train_user, ds.train_item, ds.train_behavior, _pairs(pairs), ds.n_items,
                               ds.n_behaviors - 1)
    return found.any(axis=1)


def grouped_metrics(n_greater: np.ndarray, n_tied: np.ndarray, seen: np.ndarray, ks: Sequence[int],
                    tie_rule: str = "expected", seed: int = 0) -> tuple[dict[str, float], dict[str, Any]]:
    """``(metrics, groups)``: the mean of each per-user metric over all users (the value
    :func:`~cml_dgl.eval.metrics.metrics_from_bounds` gives, the same draws for ``random``), and
    ``{"seen": {"n_users", "metrics"}, "new": {...}}`` over the users where ``seen`` is true / false;
    an empty group's metrics are ``None``."""
    per_user = per_user_metrics(n_greater, n_tied, ks, tie_rule, np.random.default_rng(seed))
    if len(per_user["mrr"]) == 0:
        raise ValueError("no users to evaluate")
    metrics = {name: float(values.mean()) for name, values in per_user.items()}
    groups: dict[str, Any] = {}
    for name, mask in zip(GROUPS, (seen, ~seen)):
        n = int(mask.sum())
        groups[name] = {"n_users": n, "metrics": None if n == 0 else
                        {key: float(values[mask].mean()) for key, values in per_user.items()}}
    return metrics, groups


def evaluate(ds: Dataset, scorer: Any, *, split: str = "test", protocol: str = "sampled",
             ks: Sequence[int] = (10, 20, 40), tie_rule: str = "expected", mask: str = "target",
             seed: int = 0, max_chunk_elems: int = DEFAULT_MAX_CHUNK_ELEMS,
             progress: bool = False) -> list[dict[str, Any]]:
    """Evaluate a model (or a scorer, or ``(user_emb, item_emb)``: see :func:`as_scorer`) on one
    split of ``ds``; one result dict per protocol (``progress``: the full protocol shows a progress
    bar on stderr).

    ``protocol``: ``sampled`` (positive vs ``<split>_negatives``), ``full`` (positive vs every item
    but the user's training items chosen by ``mask``) or ``both``. Each result is
    ``{"protocol", "split", "tie_rule", "n_users", "metrics": {...}, "groups": {...}}``; ``mask`` is
    added for full. ``groups`` holds the seen and new users (:func:`grouped_metrics`).
    """
    if split not in SPLITS:
        raise CmlError(f"unknown split {split!r}; expected one of {SPLITS}")
    if protocol not in PROTOCOLS + ("both",):
        raise CmlError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS + ('both',)}")
    if mask not in MASKS:
        raise CmlError(f"unknown mask {mask!r}; expected one of {MASKS}")
    ks = check_ks(ks)
    check_tie_rule(tie_rule)
    pairs = getattr(ds, split)
    if len(pairs) == 0:
        extra = "; it was made with --no-valid" if split == "valid" else ""
        raise CmlError(f"dataset has no {split} split{extra}")
    scorer = as_scorer(scorer)
    if scorer.n_users != ds.n_users or scorer.n_items != ds.n_items:
        raise CmlError(f"the model scores {scorer.n_users} users / {scorer.n_items} items, the dataset has "
                       f"{ds.n_users} / {ds.n_items} (embeddings of another dataset?)")
    seen = seen_in_auxiliary(ds, pairs)
    results: list[dict[str, Any]] = []
    for proto in PROTOCOLS if protocol == "both" else (protocol,):
        if proto == "sampled":
            g, t = sampled_rank_bounds(scorer, pairs, getattr(ds, f"{split}_negatives"),
                                       max_chunk_elems=max_chunk_elems)
            extra_fields: dict[str, Any] = {"n_negatives": int(getattr(ds, f"{split}_negatives").shape[1])}
        else:
            g, t = full_rank_bounds(scorer, pairs, training_mask(ds, mask, split),
                                    max_chunk_elems=max_chunk_elems, progress=progress)
            extra_fields = {"mask": mask}
        metrics, groups = grouped_metrics(g, t, seen, ks, tie_rule, seed)
        results.append({"protocol": proto, "split": split, "tie_rule": tie_rule,
                        "n_users": int(len(pairs)), **extra_fields, "metrics": metrics, "groups": groups})
    return results
