"""Event tables and the rules every raw source shares: dedupe, filters, id remapping.

A raw reader (``cml_dgl.data.sources``) returns :class:`Events`: one row per logged event, raw ids,
duplicates allowed. :func:`build_interactions` turns it into :class:`Interactions`:

1. **Remap** raw ids to contiguous internal ids ``0..n-1`` in ascending raw-id order (numeric order
   for integer ids, lexicographic for strings). ``user_ids[u]`` / ``item_ids[i]`` hold the raw id.
2. **Dedupe**: all events of one (user, item, behavior) collapse to one edge whose time is the
   *earliest* time among them (``t = min_e t_e``).
3. **Filter** once, in this order (no iteration to a fixed point):
   a. items with fewer than ``min_item_interactions`` deduplicated edges (any behavior) are dropped;
   b. users with fewer than ``min_purchases`` distinct target items, or fewer than
      ``min_user_interactions`` deduplicated edges (any behavior), are dropped, with all their edges.
   So the user thresholds hold exactly in the output; an item threshold holds on the edges before
   the user filter.
4. **Compact** the ids again so that only users and items with a remaining edge are kept.

Edges come out unique per (user, item, behavior) and sorted by (behavior, user, item).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cml_dgl.errors import CmlError

_INT32_MAX = np.iinfo(np.int32).max


@dataclass
class Events:
    """One row per logged event, as read from a raw log (duplicates allowed).

    ``user``/``item`` hold raw ids (an integer array, or an object/str array for string ids),
    ``behavior`` the int8 index into ``behaviors`` (target last) and ``time`` an integer time whose
    unit is ``time_unit``; the dataset stores ``time // time_divisor``.
    """

    user: np.ndarray
    item: np.ndarray
    behavior: np.ndarray
    time: np.ndarray
    behaviors: list[str]
    time_unit: str = "s"
    time_divisor: int = 1

    def __len__(self) -> int:
        return int(len(self.behavior))


@dataclass
class Interactions:
    """Deduplicated, filtered edges with internal ids, sorted by (behavior, user, item)."""

    user: np.ndarray  # int32
    item: np.ndarray  # int32
    behavior: np.ndarray  # int8
    time: np.ndarray  # int64
    user_ids: np.ndarray
    item_ids: np.ndarray
    behaviors: list[str]
    stats: dict[str, Any] = field(default_factory=dict)
    dropped_user_ids: np.ndarray | None = None  # raw ids of the users the filters dropped

    @property
    def n_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def n_items(self) -> int:
        return int(len(self.item_ids))

    @property
    def target(self) -> int:
        return len(self.behaviors) - 1


def smallest_int(a: np.ndarray) -> np.ndarray:
    """``a`` as int32 when every value fits, else as int64 (no copy when already that dtype)."""
    a = np.asarray(a)
    if a.dtype == np.int32:
        return a
    if a.size == 0 or (int(a.min()) >= -_INT32_MAX - 1 and int(a.max()) <= _INT32_MAX):
        return a.astype(np.int32)
    return a.astype(np.int64, copy=False)


def remap_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous codes for raw ids: ``(codes int32, uniques)`` with ``uniques[codes] == raw``.

    Codes follow ascending raw-id order. Integer ids whose span is small compared with their count
    use a dense lookup table (O(n), no hashing); others go through ``pandas.factorize(sort=True)``.
    """
    raw = np.asarray(raw)
    if raw.size == 0:
        return np.zeros(0, np.int32), raw[:0]
    if raw.dtype.kind in "iu":
        lo, hi = int(raw.min()), int(raw.max())
        span = hi - lo + 1
        if span <= max(4 * raw.size, 1 << 20) and span <= _INT32_MAX:
            offset = (raw - lo) if lo != 0 else raw
            present = np.zeros(span, dtype=bool)
            present[offset] = True
            lookup = np.cumsum(present, dtype=np.int32) - np.int32(1)
            uniques = np.flatnonzero(present).astype(np.int64) + lo
            return lookup[offset], uniques
    codes, uniques = pd.factorize(raw, sort=True)
    if len(uniques) > _INT32_MAX:
        raise CmlError(f"more than {_INT32_MAX} distinct ids: not supported")
    return codes.astype(np.int32), np.asarray(uniques)


def dedupe(user: np.ndarray, item: np.ndarray, behavior: np.ndarray, time: np.ndarray,
           n_users: int, n_items: int, n_behaviors: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Collapse duplicate (user, item, behavior) rows to one with the earliest time.

    Returns ``(user int32, item int32, behavior int8, time int64)`` sorted by (behavior, user, item).
    Fast path: one ``argsort`` of the int64 key ``(b * n_users + u) * n_items + i`` and a
    ``minimum.reduceat`` over the key's runs; a ``lexsort`` when that key would overflow.
    """
    n = len(user)
    if n == 0:
        return (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.int64))
    if n_behaviors * n_users * n_items < 2**63:
        key = behavior.astype(np.int64)
        key *= n_users
        key += user
        key *= n_items
        key += item
        order = np.argsort(key)
        key = key[order]
        t = time[order]
        del order
        starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
        first = np.minimum.reduceat(t, starts).astype(np.int64)
        del t
        key = key[starts]
        out_i = (key % n_items).astype(np.int32)
        key //= n_items
        out_u = (key % n_users).astype(np.int32)
        key //= n_users
        return out_u, out_i, key.astype(np.int8), first
    order = np.lexsort((time, item, user, behavior))
    b, u, i, t = behavior[order], user[order], item[order], time[order]
    new = np.concatenate(([True], (b[1:] != b[:-1]) | (u[1:] != u[:-1]) | (i[1:] != i[:-1])))
    return (u[new].astype(np.int32), i[new].astype(np.int32), b[new].astype(np.int8),
            t[new].astype(np.int64))


def _compact(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the ids present in ``ids`` to ``0..m-1`` keeping their order; returns (new ids, kept)."""
    present = np.zeros(n, dtype=bool)
    present[ids] = True
    lookup = np.cumsum(present, dtype=np.int32) - np.int32(1)
    return lookup[ids], np.flatnonzero(present)


def build_interactions(events: Events, *, min_purchases: int = 1, min_user_interactions: int = 1,
                       min_item_interactions: int = 1, what: str = "input") -> Interactions:
    """Remap, dedupe, filter and compact ``events`` (rules in the module docstring).

    ``events`` is consumed: its columns are released as soon as they are used, to keep the peak
    memory of a 100-million-row log low. ``what`` names the input in error messages. Raises
    CmlError when no user survives the filters.
    """
    n_rows = len(events)
    k = len(events.behaviors)
    target = k - 1
    u, user_raw = remap_ids(events.user)
    events.user = None  # type: ignore[assignment]  # free the raw column early
    i, item_raw = remap_ids(events.item)
    events.item = None  # type: ignore[assignment]
    u, i, b, t = dedupe(u, i, events.behavior, events.time, len(user_raw), len(item_raw), k)
    events.behavior = events.time = None  # type: ignore[assignment]
    stats: dict[str, Any] = {"rows": n_rows, "edges_after_dedupe": int(len(u)),
                             "duplicate_rows": int(n_rows - len(u)),
                             "raw_users": int(len(user_raw)), "raw_items": int(len(item_raw))}

    if min_item_interactions > 1:
        keep_item = np.bincount(i, minlength=len(item_raw)) >= min_item_interactions
        m = keep_item[i]
        u, i, b, t = u[m], i[m], b[m], t[m]
    user_ok = np.ones(len(user_raw), dtype=bool)
    if min_purchases > 0:
        user_ok &= np.bincount(u[b == target], minlength=len(user_raw)) >= min_purchases
    if min_user_interactions > 1:
        user_ok &= np.bincount(u, minlength=len(user_raw)) >= min_user_interactions
    if not user_ok.all():
        m = user_ok[u]
        u, i, b, t = u[m], i[m], b[m], t[m]
    if len(u) == 0:
        raise CmlError(f"{what}: no user is left after the filters (min_purchases={min_purchases} "
                       f"on {events.behaviors[-1]!r}, min_user_interactions={min_user_interactions}, "
                       f"min_item_interactions={min_item_interactions}); lower them")
    u, kept_u = _compact(u, len(user_raw))
    i, kept_i = _compact(i, len(item_raw))
    divisor = int(events.time_divisor)
    if divisor != 1:
        t = t // divisor
    stats.update(users=int(len(kept_u)), items=int(len(kept_i)), edges=int(len(u)),
                 users_dropped=int(len(user_raw) - len(kept_u)),
                 items_dropped=int(len(item_raw) - len(kept_i)))
    dropped = np.ones(len(user_raw), dtype=bool)
    dropped[kept_u] = False
    return Interactions(user=u, item=i, behavior=b, time=t.astype(np.int64, copy=False),
                        user_ids=user_raw[kept_u], item_ids=item_raw[kept_i],
                        behaviors=list(events.behaviors), stats=stats,
                        dropped_user_ids=user_raw[dropped])
