"""A published CML benchmark split (weiwei1206/CML; HKUDS/SSLRec ``datasets/multi_behavior``).

The folder holds, all pickled and read only through :mod:`cml_dgl.data.safe_pickle`:

- ``trn_<behavior>``: a scipy.sparse users x items matrix per behavior; a non-zero entry is an
  interaction and its value the time of it (unix seconds, or MMDD for IJCAI);
- ``tst_int``: a list (or 1-d array) of length <= users; entry u is None or u's held-out test item
  (or, where ``tst_int`` is absent, SSLRec's ``test_mat.pkl``: a users x items sparse matrix with
  at most one non-zero per user, built from ``tst_int``);
- ``meta_multi_single_beh_user_index_shuffle`` (optional): an integer array of "meta" users.

The split is kept exactly as published: benchmark ids are the internal ids (``user_ids[u] == u``),
every training entry is a training edge, the test items are those of ``tst_int``. The number of
users and items is the largest matrix shape (and ``len(tst_int)``). The behavior order comes from
``--behaviors`` or, when the ``trn_*`` files match a published dataset, from that dataset
(Tmall: pv,fav,cart,buy; IJCAI_15: click,fav,cart,buy; Retailrocket: view,cart,buy; JD:
review,browse,buy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cml_dgl.data import safe_pickle
from cml_dgl.data.events import dedupe
from cml_dgl.errors import CmlError

TEST_FILE = "tst_int"
TEST_MATRIX_FILE = "test_mat.pkl"
META_FILE = "meta_multi_single_beh_user_index_shuffle"
KNOWN_ORDERS: tuple[tuple[str, ...], ...] = (
    ("pv", "fav", "cart", "buy"),
    ("click", "fav", "cart", "buy"),
    ("view", "cart", "buy"),
    ("review", "browse", "buy"),
)


@dataclass
class PublishedSplit:
    """Training edges (unique, sorted by behavior, user, item), test pairs and meta users."""

    behaviors: list[str]
    n_users: int
    n_items: int
    user: np.ndarray
    item: np.ndarray
    behavior: np.ndarray
    time: np.ndarray
    test: np.ndarray  # (m, 2) int64, ascending user
    meta_users: np.ndarray | None


def _behavior_order(folder: Path, behaviors: Sequence[str] | None) -> list[str]:
    found = sorted(p.name[4:] for p in folder.glob("trn_*") if p.is_file())
    if behaviors:
        missing = [b for b in behaviors if b not in found]
        if missing:
            raise CmlError(f"{folder}: no file trn_{missing[0]} for behavior {missing[0]!r} "
                           f"(found trn_ files for: {', '.join(found) or 'none'})")
        return list(behaviors)
    if not found:
        raise CmlError(f"{folder}: no trn_<behavior> files (expected a published CML split folder "
                       "holding trn_<behavior> matrices and tst_int)")
    for order in KNOWN_ORDERS:
        if set(order) == set(found):
            return list(order)
    raise CmlError(f"{folder}: cannot tell the order of behaviors {', '.join(found)}; "
                   "pass --behaviors a,b,...,target with the target (purchase) last")


def _test_from_matrix(path: Path, n_users: int, n_items: int) -> np.ndarray:
    shape, rows, cols, _ = _matrix(path)
    if shape[0] > n_users or shape[1] > n_items:
        raise CmlError(f"{path}: shape {shape} exceeds the trn_ matrices' ({n_users}, {n_items})")
    order = np.argsort(rows, kind="stable")
    rows, cols = rows[order], cols[order]
    dup = np.flatnonzero(rows[1:] == rows[:-1])
    if dup.size:
        raise CmlError(f"{path}: user {rows[dup[0]]} has more than one test item; expected at most one")
    if rows.size == 0:
        raise CmlError(f"{path}: no test items (the matrix is empty)")
    return np.stack([rows.astype(np.int64), cols.astype(np.int64)], axis=1)


def _matrix(path: Path) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
    """(shape, rows, cols, times) of the non-zero entries of a pickled sparse matrix."""
    import scipy.sparse as sp

    obj = safe_pickle.restricted_load(path)
    if not sp.issparse(obj):
        raise CmlError(f"{path}: expected a pickled scipy.sparse users x items matrix, "
                       f"got {type(obj).__name__}")
    try:
        if obj.format in ("csr", "csc"):
            obj.check_format(full_check=True)
        coo = obj.tocoo()
        if coo.ndim != 2:
            raise ValueError(f"{coo.ndim} dimensions")
    except Exception as e:  # a pickle can assemble a matrix object with arbitrary broken state
        raise CmlError(f"{path}: inconsistent sparse matrix ({type(e).__name__}: {e})") from None
    if coo.data.dtype.kind not in "iubf":
        raise CmlError(f"{path}: expected numeric matrix values (timestamps), got {coo.data.dtype}")
    rows, cols = np.asarray(coo.row), np.asarray(coo.col)
    if rows.size and (rows.min() < 0 or cols.min() < 0 or rows.max() >= coo.shape[0]
                      or cols.max() >= coo.shape[1]):
        raise CmlError(f"{path}: entry indices outside the matrix shape {coo.shape}")
    data = np.asarray(coo.data)
    if data.dtype.kind == "f" and not np.all(np.isfinite(data) & (data == np.floor(data))):
        raise CmlError(f"{path}: expected integer timestamps as matrix values, found fractions")
    nz = data != 0
    return (int(coo.shape[0]), int(coo.shape[1])), rows[nz], cols[nz], data[nz].astype(np.int64)


def _test_items(path: Path, n_users: int, n_items: int) -> np.ndarray:
    obj = safe_pickle.restricted_load(path)
    if isinstance(obj, np.ndarray) and obj.ndim == 1:
        arr = obj.astype(object) if obj.dtype.kind in "iu" else obj
    elif isinstance(obj, (list, tuple)):
        arr = np.empty(len(obj), dtype=object)
        arr[:] = list(obj)
    else:
        raise CmlError(f"{path}: expected a pickled list of test items (None or an item id per "
                       f"user), got {type(obj).__name__}")
    is_int = np.frompyfunc(lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool), 1, 1)
    ok_int = is_int(arr).astype(bool) if len(arr) else np.zeros(0, bool)
    is_none = np.equal(arr, None) if len(arr) else np.zeros(0, bool)
    bad = np.flatnonzero(~(ok_int | is_none))
    if bad.size:
        raise CmlError(f"{path}: entry {bad[0]}: expected None or an integer item id, got {arr[bad[0]]!r}")
    users = np.flatnonzero(ok_int)
    items = arr[users].astype(np.int64)
    if len(arr) > n_users:
        raise CmlError(f"{path}: {len(arr)} entries, but the trn_ matrices have {n_users} users")
    out = np.flatnonzero((items < 0) | (items >= n_items))
    if out.size:
        raise CmlError(f"{path}: entry {users[out[0]]}: item {items[out[0]]} is outside the "
                       f"trn_ matrices' {n_items} items")
    if users.size == 0:
        raise CmlError(f"{path}: no test items (every entry is None)")
    return np.stack([users.astype(np.int64), items], axis=1)


def _meta_users(path: Path, n_users: int) -> np.ndarray | None:
    if not path.exists():
        return None
    obj = safe_pickle.restricted_load(path)
    try:
        arr = np.asarray(obj) if isinstance(obj, (np.ndarray, list, tuple)) else None
    except ValueError:
        arr = None
    if arr is None or arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise CmlError(f"{path}: expected a pickled 1-d integer array of user ids, "
                       f"got {type(obj).__name__}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_users):
        raise CmlError(f"{path}: meta user ids must lie in [0, {n_users})")
    return arr.astype(np.int64)


def read(folder: str | os.PathLike, behaviors: Sequence[str] | None = None) -> PublishedSplit:
    """Load a published split folder (rules in the module docstring)."""
    d = Path(folder)
    if not d.exists():
        raise CmlError(f"{d}: no such folder")
    if not d.is_dir():
        raise CmlError(f"{d}: expected a folder holding trn_<behavior> files and {TEST_FILE}, got a file")
    order = _behavior_order(d, behaviors)
    mats = [_matrix(d / f"trn_{b}") for b in order]
    n_users = max(m[0][0] for m in mats)
    n_items = max(m[0][1] for m in mats)
    test_path = d / TEST_FILE
    if test_path.exists():
        test = _test_items(test_path, n_users, n_items)
    elif (d / TEST_MATRIX_FILE).exists():
        test = _test_from_matrix(d / TEST_MATRIX_FILE, n_users, n_items)
    else:
        raise CmlError(f"{test_path}: no such file (a published split holds its test items there, "
                       f"or in {TEST_MATRIX_FILE})")
    user = np.concatenate([m[1] for m in mats])
    item = np.concatenate([m[2] for m in mats])
    time = np.concatenate([m[3] for m in mats])
    beh = np.concatenate([np.full(len(m[1]), k, dtype=np.int8) for k, m in enumerate(mats)])
    user, item, beh, time = dedupe(user, item, beh, time, n_users, n_items, len(order))
    return PublishedSplit(behaviors=order, n_users=int(n_users), n_items=int(n_items), user=user,
                          item=item, behavior=beh, time=time, test=test,
                          meta_users=_meta_users(d / META_FILE, n_users))
