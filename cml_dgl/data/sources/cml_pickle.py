"""A published CML benchmark split, in the authors' layout or in SSLRec's.

Two layouts of the same splits are read, all pickled and only through :mod:`cml_dgl.data.safe_pickle`:

- the authors' (weiwei1206/CML): ``trn_<behavior>`` training matrices and ``tst_int``;
- SSLRec's (HKUDS/SSLRec ``datasets/multi_behavior/<name>/``, read by its
  ``data_utils/data_handler_multi_behavior.py``): ``train_mat_<behavior>.pkl`` training matrices
  (the authors' ``trn_`` matrices dumped again under that name) and ``test_mat.pkl``. The folder may
  also hold HMGCR's meta-path matrices ``train_mat_<b1>_<b2>[_...].pkl`` (e.g.
  ``train_mat_view_cart_buy.pkl``), unions of behaviors; they are not behaviors and are ignored.

The files:

- training matrices: a scipy.sparse users x items matrix per behavior; a non-zero entry is an
  interaction and its value the time of it (unix seconds, or MMDD for IJCAI);
- ``tst_int``: a list (or 1-d array) of length <= users; entry u is None or u's held-out test item;
- ``test_mat.pkl``: the same test items as a users x items sparse matrix (SSLRec writes a
  ``coo_matrix`` of ones built from ``tst_int``), at most one non-zero per user;
- ``meta_multi_single_beh_user_index_shuffle`` (optional, both layouts): an integer array of "meta"
  users.

Either test file may go with either layout. A folder holding both training layouts (SSLRec's own
folders ship the ``trn_`` files next to their ``train_mat_`` copies) is read only when the two hold
the same behaviors and every ``trn_<b>`` equals ``train_mat_<b>.pkl`` (shape, entries, times);
likewise ``tst_int`` and ``test_mat.pkl`` must hold the same test pairs when both are present.
Anything else is an error naming the files that disagree.

The split is kept exactly as published: benchmark ids are the internal ids (``user_ids[u] == u``),
every training entry is a training edge, the test items are the published ones. The split is
checked as it is read: every training matrix has the same users x items shape, ``tst_int`` has one
entry per user (``test_mat.pkl`` the training shape), and no test pair is a training purchase (the
validation item carved from the latest purchase would then be the test item). The behavior order
comes from ``--behaviors`` or, when the behavior files match a published dataset, from that
dataset, the target (purchase) last, as in both the authors' code and SSLRec (Tmall:
pv,fav,cart,buy; IJCAI_15: click,fav,cart,buy; Retailrocket: view,cart,buy; JD: review,browse,buy);
``--behaviors`` may choose and order the auxiliary behaviors but must end with the purchases
(``buy``) where the folder has them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

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


@dataclass(frozen=True)
class Layout:
    """How one layout names its per-behavior training matrices and its test file."""

    name: str
    prefix: str
    suffix: str
    test_file: str

    def file(self, behavior: str) -> str:
        return f"{self.prefix}{behavior}{self.suffix}"

    @property
    def pattern(self) -> str:
        return self.file("<behavior>")

    def names(self, folder: Path) -> list[str]:
        """Behavior names of the files matching this layout, sorted (meta paths included)."""
        cut = len(self.prefix), len(self.suffix)
        return sorted(p.name[cut[0]:len(p.name) - cut[1]] for p in folder.iterdir()
                      if p.name.startswith(self.prefix) and p.name.endswith(self.suffix)
                      and len(p.name) > sum(cut) and p.is_file())


AUTHORS = Layout("the authors'", "trn_", "", TEST_FILE)
SSLREC = Layout("SSLRec's", "train_mat_", ".pkl", TEST_MATRIX_FILE)


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
    valid: np.ndarray | None = None  # published validation pairs, ascending user (list layouts)
    timed: bool = True  # whether ``time`` holds event times (adjacency lists have none)
    stats: dict[str, Any] = field(default_factory=dict)  # the reader's counts, into options.stats


def _drop_meta_paths(names: list[str]) -> list[str]:
    """Leave out SSLRec's meta-path matrices: names joining two or more behavior names with ``_``.

    A behavior name here is one of the folder's names without ``_`` or a published one, so the
    meta paths go even where a behavior file is missing (``view_buy`` without ``buy``).
    """
    vocabulary = {n for n in names if "_" not in n} | {b for order in KNOWN_ORDERS for b in order}
    return [n for n in names
            if not (len(parts := n.split("_")) > 1 and all(p in vocabulary for p in parts))]


def _known_order(folder: Path, found: list[str], layout: Layout) -> list[str]:
    for order in KNOWN_ORDERS:
        if set(order) == set(found):
            return list(order)
    partial = [order for order in KNOWN_ORDERS if set(found) < set(order)]
    if partial:
        lacking = " or ".join(", ".join(layout.file(b) for b in order if b not in found) for order in partial)
        raise CmlError(f"{folder}: no {lacking} (the {layout.pattern} files cover only {', '.join(found)}: "
                       "an incomplete published split); pass --behaviors a,b,...,target to use only these")
    raise CmlError(f"{folder}: cannot tell the order of behaviors {', '.join(found)}; "
                   "pass --behaviors a,b,...,target with the target (purchase) last")


def _layouts(folder: Path, behaviors: Sequence[str] | None) -> tuple[list[str], list[Layout]]:
    """The behavior order and the layouts (one, or both when the folder holds both) to read."""
    found = {AUTHORS: AUTHORS.names(folder), SSLREC: SSLREC.names(folder)}
    proper = {AUTHORS: found[AUTHORS], SSLREC: _drop_meta_paths(found[SSLREC])}
    asked = set(behaviors or ())
    present = [lay for lay in (AUTHORS, SSLREC) if proper[lay] or asked & set(found[lay])]
    if not present:
        stray = sorted(p.name for p in folder.glob(f"{SSLREC.prefix}*")
                       if p.is_file() and not p.name.endswith(SSLREC.suffix))
        hint = (f"; {stray[0]} lacks the .pkl suffix that SSLRec's loader reads" if stray else "")
        raise CmlError(f"{folder}: no {AUTHORS.pattern} files (the authors' layout, with {TEST_FILE}) "
                       f"or {SSLREC.pattern} files (SSLRec's layout, with {TEST_MATRIX_FILE}){hint}")
    both = len(present) == 2
    if behaviors:
        for lay in present:
            missing = [b for b in behaviors if b not in found[lay]]
            if missing:
                mixed = (f"; the folder also holds {(SSLREC if lay is AUTHORS else AUTHORS).pattern} "
                         "files, and a folder mixing both layouts needs every behavior in each"
                         if both else "")
                raise CmlError(f"{folder}: no file {lay.file(missing[0])} for behavior {missing[0]!r} "
                               f"(found {lay.prefix} files for: {', '.join(found[lay])}){mixed}")
        purchase = sorted({order[-1] for order in KNOWN_ORDERS} & set(found[present[0]]))
        if purchase and behaviors[-1] not in purchase:
            raise CmlError(f"{folder}: --behaviors {','.join(behaviors)} makes {behaviors[-1]!r} the target, "
                           f"but this split's test items are purchases ({present[0].file(purchase[0])}); "
                           f"list {purchase[0]} last")
        return list(behaviors), present
    if both and set(proper[AUTHORS]) != set(proper[SSLREC]):
        raise CmlError(f"{folder}: mixes the authors' layout ({AUTHORS.prefix} files for: "
                       f"{', '.join(proper[AUTHORS])}) and SSLRec's ({SSLREC.pattern} files for: "
                       f"{', '.join(proper[SSLREC])}) with different behaviors; keep one layout's files")
    return _known_order(folder, proper[present[0]], present[0]), present


def _test_from_matrix(path: Path, n_users: int, n_items: int, mats: str) -> np.ndarray:
    shape, rows, cols, _ = _matrix(path)
    if shape != (n_users, n_items):
        raise CmlError(f"{path}: shape {shape} differs from the {mats}' ({n_users}, {n_items})")
    order = np.argsort(rows, kind="stable")
    rows, cols = rows[order], cols[order]
    dup = np.flatnonzero(rows[1:] == rows[:-1])
    if dup.size:
        raise CmlError(f"{path}: user {rows[dup[0]]} has more than one test item; expected at most one")
    if rows.size == 0:
        raise CmlError(f"{path}: no test items (the matrix is empty)")
    return np.stack([rows.astype(np.int64), cols.astype(np.int64)], axis=1)


Entries = tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]


def _matrix(path: Path) -> Entries:
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


def _same_matrix(folder: Path, a: Path, ma: Entries, b: Path, mb: Entries) -> None:
    """Refuse a mixed folder whose two copies of one behavior differ; say where."""
    def sorted_entries(m: Entries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = np.lexsort((m[3], m[2], m[1]))
        return m[1][order], m[2][order], m[3][order]

    if ma[0] != mb[0]:
        how = f"shapes {ma[0]} and {mb[0]}"
    elif len(ma[1]) != len(mb[1]):
        how = f"{len(ma[1])} and {len(mb[1])} non-zero entries"
    else:
        (ra, ca, ta), (rb, cb, tb) = sorted_entries(ma), sorted_entries(mb)
        diff = np.flatnonzero((ra != rb) | (ca != cb) | (ta != tb))
        if not diff.size:
            return
        how = f"first difference at user {ra[diff[0]]}, item {ca[diff[0]]}"
    raise CmlError(f"{folder}: mixes the authors' and SSLRec's layouts, and {a.name} and {b.name} hold "
                   f"different matrices ({how}); keep one layout's files")


def _test_items(path: Path, n_users: int, n_items: int, mats: str) -> np.ndarray:
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
    if len(arr) != n_users:
        raise CmlError(f"{path}: {len(arr)} entries, but the {mats} have {n_users} users; expected one "
                       "entry (None or the test item) per user")
    out = np.flatnonzero((items < 0) | (items >= n_items))
    if out.size:
        raise CmlError(f"{path}: entry {users[out[0]]}: item {items[out[0]]} is outside the "
                       f"{mats}' {n_items} items")
    if users.size == 0:
        raise CmlError(f"{path}: no test items (every entry is None)")
    return np.stack([users.astype(np.int64), items], axis=1)


def _test_pairs(folder: Path, layout: Layout, n_users: int, n_items: int) -> np.ndarray:
    """Test pairs from ``tst_int`` and/or ``test_mat.pkl``; both present must agree."""
    mats = f"{layout.prefix} matrices"
    found = []
    if (folder / TEST_FILE).exists():
        found.append((TEST_FILE, _test_items(folder / TEST_FILE, n_users, n_items, mats)))
    if (folder / TEST_MATRIX_FILE).exists():
        found.append((TEST_MATRIX_FILE, _test_from_matrix(folder / TEST_MATRIX_FILE, n_users, n_items, mats)))
    if not found:
        other = TEST_MATRIX_FILE if layout.test_file == TEST_FILE else TEST_FILE
        raise CmlError(f"{folder / layout.test_file}: no such file ({layout.name} layout holds its test "
                       f"items there, or in {other})")
    if len(found) == 2:
        (a, ta), (b, tb) = found
        if ta.shape != tb.shape:
            raise CmlError(f"{folder}: {a} and {b} hold different test items ({len(ta)} and {len(tb)} "
                           "test users); keep one of them")
        diff = np.flatnonzero((ta != tb).any(axis=1))
        if diff.size:
            (ua, ia), (ub, ib) = ta[diff[0]], tb[diff[0]]
            raise CmlError(f"{folder}: {a} and {b} hold different test items (first difference: "
                           f"user {ua} item {ia} in {a}, user {ub} item {ib} in {b}); keep one of them")
    return found[0][1]


def _check_held_out(folder: Path, test: np.ndarray, target: Entries, target_file: str) -> None:
    """A test pair must not be a training purchase: carving validation from the latest training
    purchase would then hold out the test pair itself, and validation would equal test."""
    n_items = target[0][1]
    keys = np.unique(target[1].astype(np.int64) * n_items + target[2])
    test_keys = test[:, 0] * n_items + test[:, 1]
    pos = np.searchsorted(keys, test_keys).clip(max=max(len(keys) - 1, 0))
    both = np.flatnonzero(keys[pos] == test_keys) if len(keys) else np.zeros(0, dtype=np.int64)
    if both.size:
        u, i = test[both[0]]
        raise CmlError(f"{folder}: {both.size:,} test pair{'s are' if both.size > 1 else ' is'} also training "
                       f"purchases in {target_file} (first: user {u}, item {i}); a published split holds "
                       "its test purchases out of training")


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
    """Load a published split folder in either layout (rules in the module docstring)."""
    d = Path(folder)
    if not d.exists():
        raise CmlError(f"{d}: no such folder")
    if not d.is_dir():
        raise CmlError(f"{d}: expected a folder holding {AUTHORS.pattern} files and {TEST_FILE} "
                       f"(or SSLRec's {SSLREC.pattern} files and {TEST_MATRIX_FILE}), got a file")
    order, layouts = _layouts(d, behaviors)
    mats = []
    for b in order:
        first, *rest = layouts
        m = _matrix(d / first.file(b))
        for other in rest:
            _same_matrix(d, d / first.file(b), m, d / other.file(b), _matrix(d / other.file(b)))
        mats.append(m)
    shapes = {m[0] for m in mats}
    if len(shapes) > 1:
        listed = ", ".join(f"{layouts[0].file(b)} {m[0]}" for b, m in zip(order, mats))
        raise CmlError(f"{d}: the training matrices differ in shape ({listed}); every behavior's matrix "
                       "must be the same users x items")
    n_users, n_items = mats[0][0]
    test = _test_pairs(d, layouts[0], n_users, n_items)
    _check_held_out(d, test, mats[-1], layouts[0].file(order[-1]))
    user = np.concatenate([m[1] for m in mats])
    item = np.concatenate([m[2] for m in mats])
    time = np.concatenate([m[3] for m in mats])
    beh = np.concatenate([np.full(len(m[1]), k, dtype=np.int8) for k, m in enumerate(mats)])
    user, item, beh, time = dedupe(user, item, beh, time, n_users, n_items, len(order))
    return PublishedSplit(behaviors=order, n_users=int(n_users), n_items=int(n_items), user=user,
                          item=item, behavior=beh, time=time, test=test,
                          meta_users=_meta_users(d / META_FILE, n_users))
