"""Leave-one-out by time on the target behavior, and the stored candidates of the sampled protocol.

**Hold-out.** A user's *latest* target edge is the one with the largest time; ties in time go to
the larger internal item id (internal ids follow raw-id order, so: the larger raw id). For raw
sources each user's latest purchase is the test item and the latest remaining one the validation
item (users with at least 2 purchases). For a published split the test items are given and the
validation item is the latest training purchase of each test user, or, where the split has no
times, a seeded uniform one (:func:`hold_out_random`).

**Auxiliary edges of a held-out pair** (``auxiliary``): ``drop`` removes the pair from *every*
behavior's training edges, as the CML splits do (the default for raw logs); ``keep`` removes only
its target edge, as MB-CGCN's and CRGCN's splits do; ``before`` keeps the auxiliary edges whose
time is strictly earlier than the held-out purchase (what a shop knows when it predicts it; an
edge's time is its earliest event).

**Candidates.** For every test (validation) user ``n`` negatives (99 by default) are drawn once,
uniformly without replacement among the items the user never purchased: not a training purchase,
not the held-out validation or test item (so never the positive, and never another real purchase).
Each row is drawn in bulk: ``n`` uniform items per user, rejected draws (purchased items and
repeats within the row) are redrawn, vectorised over all users, until none is left; rows still
rejected after ``_MAX_ROUNDS`` (users whose eligible items are few) get an exact draw: random keys
over all items, ineligible ones set to +inf, the ``n`` smallest kept. Both are uniform over the
``n``-subsets of eligible items. A user with fewer than ``n`` eligible items is an error.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cml_dgl.errors import CmlError

HELD_OUT_AUXILIARY = ("drop", "keep", "before")
_MAX_ROUNDS = 32
_ROWS_PER_CHUNK = 1 << 16
_EXACT_CELLS = 1 << 24


def latest_per_user(user: np.ndarray, item: np.ndarray, time: np.ndarray, n_users: int) -> np.ndarray:
    """``held[u]``: the item of u's latest entry (largest time, then largest item), -1 if none."""
    held = np.full(n_users, -1, dtype=np.int32)
    if len(user) == 0:
        return held
    order = np.lexsort((item, time, user))
    us = user[order]
    last = np.flatnonzero(np.concatenate((us[1:] != us[:-1], [True])))
    held[us[last]] = item[order[last]]
    return held


def kept_after_hold_out(user: np.ndarray, item: np.ndarray, behavior: np.ndarray, time: np.ndarray,
                        held: np.ndarray, target: int, auxiliary: str = "drop") -> np.ndarray:
    """Mask of edges that stay in training when ``held[u]`` (-1: none) is held out of each user.

    The pair's target edge always goes; its auxiliary edges follow ``auxiliary`` (module docstring):
    with ``before``, an auxiliary edge stays when ``time < t(u, held[u], target)``.
    """
    if auxiliary not in HELD_OUT_AUXILIARY:
        raise ValueError(f"auxiliary must be one of {HELD_OUT_AUXILIARY}, got {auxiliary!r}")
    on_pair = held[user] == item
    if auxiliary == "drop":
        return ~on_pair
    is_target = behavior == target
    if auxiliary == "keep":
        return ~(on_pair & is_target)
    held_edge = on_pair & is_target
    held_time = np.zeros(len(held), dtype=np.int64)
    held_time[user[held_edge]] = time[held_edge]
    return ~on_pair | (~is_target & (time < held_time[user]))


def hold_out_latest(user: np.ndarray, item: np.ndarray, behavior: np.ndarray, time: np.ndarray,
                    n_users: int, target: int, candidates: np.ndarray | None = None,
                    auxiliary: str = "drop") -> tuple[np.ndarray, np.ndarray]:
    """Hold out each user's latest target edge among ``candidates`` (a mask over edges, or all).

    Returns ``(held, keep)``: ``held[u]`` the held-out item or -1, and ``keep`` the mask of edges
    that stay in training (:func:`kept_after_hold_out`).
    """
    is_target = behavior == target
    if candidates is not None:
        is_target &= candidates
    idx = np.flatnonzero(is_target)
    held = latest_per_user(user[idx], item[idx], time[idx], n_users)
    return held, kept_after_hold_out(user, item, behavior, time, held, target, auxiliary)


def hold_out_random(user: np.ndarray, item: np.ndarray, behavior: np.ndarray, n_users: int,
                    target: int, candidates: np.ndarray, rng: np.random.Generator,
                    auxiliary: str = "drop") -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`hold_out_latest` for edges without times: a uniform target edge per user.

    Each candidate target edge gets a distinct random rank; the user's highest rank is held out,
    so every one of a user's candidates is equally likely. ``auxiliary`` may not be ``before``.
    """
    if auxiliary == "before":
        raise ValueError("auxiliary='before' needs times")
    idx = np.flatnonzero((behavior == target) & candidates)
    held = latest_per_user(user[idx], item[idx], rng.permutation(len(idx)), n_users)
    return held, kept_after_hold_out(user, item, behavior, np.zeros(0, np.int64), held, target,
                                     auxiliary)


def pairs_in_behaviors(user: np.ndarray, item: np.ndarray, behavior: np.ndarray, pairs_: np.ndarray,
                       n_items: int, n_behaviors: int) -> np.ndarray:
    """``found[r, k]``: whether pair ``pairs_[r]`` (user, item) has a training edge of behavior k."""
    keys = pairs_[:, 0].astype(np.int64) * n_items + pairs_[:, 1]
    found = np.zeros((len(pairs_), n_behaviors), dtype=bool)
    for k in range(n_behaviors):
        on = behavior == k
        found[:, k] = np.isin(keys, user[on].astype(np.int64) * n_items + item[on])
    return found


def pairs(held: np.ndarray) -> np.ndarray:
    """(m, 2) int32 array of (user, item) for the users with a held-out item, ascending user."""
    users = np.flatnonzero(held >= 0)
    return np.stack([users, held[users]], axis=1).astype(np.int32).reshape(-1, 2)


def leave_one_out(user: np.ndarray, item: np.ndarray, behavior: np.ndarray, time: np.ndarray,
                  n_users: int, target: int, valid: bool = True, auxiliary: str = "drop"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test = latest purchase, validation = latest remaining purchase; ``(keep, valid, test)``.

    Each held-out pair's auxiliary edges follow ``auxiliary``, measured against its own purchase.
    """
    test_of, keep = hold_out_latest(user, item, behavior, time, n_users, target, auxiliary=auxiliary)
    valid_of = np.full(n_users, -1, dtype=np.int32)
    if valid:
        valid_of, keep_v = hold_out_latest(user, item, behavior, time, n_users, target,
                                           keep & (behavior == target), auxiliary)
        keep &= keep_v
    return keep, pairs(valid_of), pairs(test_of)


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``arange(lo[r], hi[r])`` and the row ``r`` of each element, vectorised."""
    counts = hi - lo
    rows = np.repeat(np.arange(len(lo)), counts)
    starts = np.cumsum(counts) - counts
    idx = np.arange(int(counts.sum())) - np.repeat(starts, counts) + np.repeat(lo, counts)
    return idx, rows


def _rejected(neg: np.ndarray, users: np.ndarray, exclude: np.ndarray, n_items: int) -> np.ndarray:
    """Mask of draws to redo: excluded (user, item) keys, and repeats of an earlier column."""
    bad = np.zeros(neg.shape, dtype=bool)
    if exclude.size:
        keys = users[:, None] * np.int64(n_items) + neg
        pos = np.minimum(np.searchsorted(exclude, keys), exclude.size - 1)
        bad = exclude[pos] == keys
    order = np.argsort(neg, axis=1, kind="stable")
    s = np.take_along_axis(neg, order, axis=1)
    dup_sorted = np.zeros(neg.shape, dtype=bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    dup = np.zeros(neg.shape, dtype=bool)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return bad | dup


def _exact_rows(users: np.ndarray, exclude: np.ndarray, n_items: int, n: int,
                rng: np.random.Generator) -> np.ndarray:
    """Uniform n-subsets of eligible items by random keys (for rows where rejection stalls)."""
    out = np.empty((len(users), n), dtype=np.int64)
    step = max(1, _EXACT_CELLS // max(n_items, 1))
    for s in range(0, len(users), step):
        u = users[s:s + step]
        keys = rng.random((len(u), n_items))
        lo = np.searchsorted(exclude, u * np.int64(n_items))
        hi = np.searchsorted(exclude, (u + 1) * np.int64(n_items))
        idx, rows = _ranges(lo, hi)
        keys[rows, exclude[idx] - u[rows] * np.int64(n_items)] = np.inf
        out[s:s + step] = np.argpartition(keys, n - 1, axis=1)[:, :n]
    return out


def draw_negatives(users: np.ndarray, exclude: np.ndarray, n_items: int, n: int,
                   rng: np.random.Generator, describe: Callable[[int], str] = str) -> np.ndarray:
    """``n`` uniform negatives per user, none in ``exclude``; an (m, n) int32 array.

    ``exclude`` is the sorted, unique int64 array of keys ``user * n_items + item`` that may not be
    drawn. ``describe(u)`` names user u in the error raised when one has fewer than ``n`` eligible
    items.
    """
    users = np.asarray(users, dtype=np.int64)
    if len(users) == 0:
        return np.zeros((0, n), dtype=np.int32)
    exclude = np.asarray(exclude, dtype=np.int64)
    n_excl = (np.searchsorted(exclude, (users + 1) * np.int64(n_items))
              - np.searchsorted(exclude, users * np.int64(n_items)))
    eligible = n_items - n_excl
    short = np.flatnonzero(eligible < n)
    if short.size:
        u = int(short[0])
        raise CmlError(f"user {describe(int(users[u]))} has only {int(eligible[u])} eligible negative "
                       f"items (never purchased, not the positive) out of {n_items}; {n} are needed "
                       f"(--negatives); {short.size} user(s) are short")
    out = np.empty((len(users), n), dtype=np.int32)
    for s in range(0, len(users), _ROWS_PER_CHUNK):
        u = users[s:s + _ROWS_PER_CHUNK]
        neg = rng.integers(0, n_items, size=(len(u), n), dtype=np.int64)
        rows = np.arange(len(u))
        for _ in range(_MAX_ROUNDS):
            bad = _rejected(neg[rows], u[rows], exclude, n_items)
            keep_rows = bad.any(axis=1)
            rows, bad = rows[keep_rows], bad[keep_rows]
            if rows.size == 0:
                break
            sub = neg[rows]
            sub[bad] = rng.integers(0, n_items, size=int(bad.sum()), dtype=np.int64)
            neg[rows] = sub
        else:
            bad = _rejected(neg[rows], u[rows], exclude, n_items).any(axis=1)
            rows = rows[bad]
            if rows.size:
                neg[rows] = _exact_rows(u[rows], exclude, n_items, n, rng)
        out[s:s + _ROWS_PER_CHUNK] = neg
    return out
