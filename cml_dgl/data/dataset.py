"""The on-disk dataset format (see docs/data-format.md): plain ``.npy`` arrays plus ``meta.json``.

A dataset directory holds

==========================  ==============  =====================================================
file                        dtype, shape    content
==========================  ==============  =====================================================
``train_user.npy``          int32 (E,)      internal user id of every training edge
``train_item.npy``          int32 (E,)      internal item id
``train_behavior.npy``      int8 (E,)       index into ``meta.json["behaviors"]`` (target last)
``train_time.npy``          int64 (E,)      earliest time of the (user, item, behavior) event
``valid.npy``/``test.npy``  int32 (n, 2)    held-out (user, item) target pairs, one per user
``valid_negatives.npy``     int32 (n, 99)   stored negatives of the sampled protocol
``test_negatives.npy``      int32 (n, 99)
``user_ids.npy``            int64 or str    raw id of internal user u at row u
``item_ids.npy``            int64 or str    raw id of internal item i at row i
``meta_users.npy``          int32 (m,)      optional: the users that meta batches are drawn from
``dropped_user_ids.npy``    int64 or str    optional: raw ids of the users the preprocessing
                                            filters dropped (read on demand, for messages)
``meta.json``               JSON            version, source, behaviors, counts, options, seed,
                                            and the sha256 of every file above
==========================  ==============  =====================================================

Training edges are sorted by (behavior, user, item) and unique per (user, item, behavior).
Arrays are read with ``allow_pickle=False``; nothing here imports DGL.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cml_dgl.errors import CmlError
from cml_dgl.fsutil import atomic_dir, atomic_write_json, sha256_file
from cml_dgl.outputs import check_output, write_mark

FORMAT_VERSION = 1
N_NEGATIVES = 99

_ARRAYS = {
    # name: (dtype kinds allowed, ndim, second dimension or None)
    "train_user": ("i", 1, None),
    "train_item": ("i", 1, None),
    "train_behavior": ("i", 1, None),
    "train_time": ("i", 1, None),
    "valid": ("i", 2, 2),
    "test": ("i", 2, 2),
    "valid_negatives": ("i", 2, None),
    "test_negatives": ("i", 2, None),
    "user_ids": ("iuU", 1, None),
    "item_ids": ("iuU", 1, None),
}


@dataclass
class Dataset:
    """A split multi-behavior dataset with internal ids ``0..n_users-1`` and ``0..n_items-1``."""

    behaviors: list[str]
    n_users: int
    n_items: int
    train_user: np.ndarray
    train_item: np.ndarray
    train_behavior: np.ndarray
    train_time: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    valid_negatives: np.ndarray
    test_negatives: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    meta_users: np.ndarray | None = None
    source: str = "unknown"
    options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    path: Path | None = None
    dropped_user_ids: np.ndarray | None = None
    checksums: dict[str, str] | None = None  # sha256 of each file, as meta.json lists them (loaded datasets)

    @property
    def target(self) -> str:
        return self.behaviors[-1]

    @property
    def n_behaviors(self) -> int:
        return len(self.behaviors)

    def behavior_index(self, name: str) -> int:
        try:
            return self.behaviors.index(name)
        except ValueError:
            raise CmlError(f"unknown behavior {name!r}; this dataset has {self.behaviors}") from None

    def edges(self, behavior: int | str) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of the training edges of one behavior (index or name), as int64."""
        k = self.behavior_index(behavior) if isinstance(behavior, str) else int(behavior)
        lo, hi = np.searchsorted(self.train_behavior, [k, k + 1])
        if np.all(self.train_behavior[lo:hi] == k) and (
            hi - lo == int(np.count_nonzero(self.train_behavior == k))
        ):
            sl = slice(lo, hi)
            return self.train_user[sl].astype(np.int64), self.train_item[sl].astype(np.int64)
        mask = self.train_behavior == k
        return self.train_user[mask].astype(np.int64), self.train_item[mask].astype(np.int64)

    def train_counts(self) -> dict[str, int]:
        counts = np.bincount(self.train_behavior.astype(np.int64), minlength=self.n_behaviors)
        return {b: int(c) for b, c in zip(self.behaviors, counts)}

    def csr(self, behavior: int | str):
        """Binary user x item ``scipy.sparse.csr_matrix`` of one behavior's training edges."""
        import scipy.sparse as sp

        u, i = self.edges(behavior)
        data = np.ones(len(u), dtype=np.float32)
        return sp.csr_matrix((data, (u, i)), shape=(self.n_users, self.n_items))

    def id_map_checksum(self) -> str:
        """A digest of the raw<->internal id maps: checkpoints record it to detect a wrong dataset."""
        h = hashlib.sha256()
        for arr in (self.user_ids, self.item_ids):
            h.update(str(arr.dtype).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def fingerprint(self) -> dict[str, Any] | None:
        """What a run directory records of its dataset: the sha256 of every file and the options it
        was made with (see :func:`fingerprint_changes`); None for a dataset not read from disk."""
        if self.checksums is None:
            return None
        return {"checksums": dict(self.checksums), "seed": self.seed,
                "options": {k: v for k, v in self.options.items() if k != "stats"}}

    def info(self) -> dict[str, Any]:
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "behaviors": list(self.behaviors),
            "target": self.target,
            "train_edges": self.train_counts(),
            "valid_users": int(len(self.valid)),
            "test_users": int(len(self.test)),
            "meta_users": None if self.meta_users is None else int(len(self.meta_users)),
            "source": self.source,
            "seed": self.seed,
            "options": self.options,
        }

    def validate(self) -> None:
        """Check shapes and id ranges; raise CmlError naming the array that is wrong."""
        where = self.path or "dataset"
        e = len(self.train_user)
        for name in ("train_item", "train_behavior", "train_time"):
            if len(getattr(self, name)) != e:
                raise CmlError(f"{where}: {name} has {len(getattr(self, name))} rows, train_user {e}")
        if len(self.behaviors) < 1 or len(set(self.behaviors)) != len(self.behaviors):
            raise CmlError(f"{where}: behaviors must be distinct and non-empty, got {self.behaviors}")
        if len(self.user_ids) != self.n_users or len(self.item_ids) != self.n_items:
            raise CmlError(f"{where}: id maps have {len(self.user_ids)} users / {len(self.item_ids)} "
                           f"items, meta.json says {self.n_users} / {self.n_items}")
        checks = [("train_user", self.train_user, self.n_users), ("train_item", self.train_item, self.n_items),
                  ("train_behavior", self.train_behavior, self.n_behaviors)]
        for split in ("valid", "test"):
            arr = getattr(self, split)
            neg = getattr(self, f"{split}_negatives")
            if arr.ndim != 2 or arr.shape[1] != 2:
                raise CmlError(f"{where}: {split} must have shape (n, 2), got {arr.shape}")
            if neg.ndim != 2 or len(neg) != len(arr):
                raise CmlError(f"{where}: {split}_negatives must have one row per {split} pair, "
                               f"got {neg.shape} for {len(arr)} pairs")
            checks += [(f"{split} users", arr[:, 0], self.n_users), (f"{split} items", arr[:, 1], self.n_items),
                       (f"{split}_negatives", neg, self.n_items)]
        if self.meta_users is not None:
            checks.append(("meta_users", self.meta_users, self.n_users))
        for name, arr, bound in checks:
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= bound):
                raise CmlError(f"{where}: {name} holds ids outside [0, {bound})")


_FILE_MEANING = {"train": "training edges", "valid": "validation pairs", "test": "test pairs",
                 "valid_negatives": "validation candidates", "test_negatives": "test candidates",
                 "user_ids": "user ids", "item_ids": "item ids", "meta_users": "meta users"}


def fingerprint_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """How the dataset of fingerprint ``new`` differs from the one of ``old``: the preprocessing
    options that changed (``seed 2023 -> 7``), then the files whose content changed; empty when
    every file is the same."""
    a, b = old.get("checksums") or {}, new.get("checksums") or {}
    files = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
    if not files:
        return []
    opt_a, opt_b = dict(old.get("options") or {}), dict(new.get("options") or {})
    opt_a.setdefault("seed", old.get("seed"))
    opt_b.setdefault("seed", new.get("seed"))

    def show(v: Any) -> str:
        text = json.dumps(v) if v is not None else "unset"
        return text if len(text) <= 60 else text[:60] + "..."

    changes = [f"{k} {show(opt_a.get(k))} -> {show(opt_b.get(k))}"
               for k in sorted(set(opt_a) | set(opt_b)) if opt_a.get(k) != opt_b.get(k)]
    stems = [n.removesuffix(".npy") for n in files]
    meaning = sorted({_FILE_MEANING.get(s, _FILE_MEANING.get(s.split("_")[0], s)) for s in stems})
    changes.append(f"changed files: {', '.join(files)} ({', '.join(meaning)})")
    return changes


def _save_array(directory: Path, name: str, arr: np.ndarray) -> dict[str, Any]:
    path = directory / f"{name}.npy"
    np.save(path, arr, allow_pickle=False)
    return {"sha256": sha256_file(path), "shape": list(arr.shape), "dtype": str(arr.dtype)}


def _negatives(neg: np.ndarray, n: int) -> np.ndarray:
    neg = np.asarray(neg, dtype=np.int32)
    return neg if neg.ndim == 2 else neg.reshape(n, -1 if n else N_NEGATIVES)


def _id_array(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    return ids.astype(str)


def write_dataset(ds: Dataset, outdir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``ds`` to ``outdir`` atomically (a temporary sibling renamed into place), marked as
    a dataset folder; an existing one is replaced only with ``overwrite`` (see :mod:`cml_dgl.outputs`)."""
    check_output(outdir, "dataset", overwrite=overwrite)
    ds.validate()
    order = np.lexsort((ds.train_item, ds.train_user, ds.train_behavior))
    arrays: dict[str, np.ndarray] = {
        "train_user": ds.train_user[order].astype(np.int32),
        "train_item": ds.train_item[order].astype(np.int32),
        "train_behavior": ds.train_behavior[order].astype(np.int8),
        "train_time": ds.train_time[order].astype(np.int64),
        "valid": ds.valid.astype(np.int32).reshape(-1, 2),
        "test": ds.test.astype(np.int32).reshape(-1, 2),
        "valid_negatives": _negatives(ds.valid_negatives, len(ds.valid)),
        "test_negatives": _negatives(ds.test_negatives, len(ds.test)),
        "user_ids": _id_array(ds.user_ids),
        "item_ids": _id_array(ds.item_ids),
    }
    if ds.meta_users is not None:
        arrays["meta_users"] = ds.meta_users.astype(np.int32)
    if ds.dropped_user_ids is not None:
        arrays["dropped_user_ids"] = _id_array(ds.dropped_user_ids)
    with atomic_dir(outdir, overwrite=overwrite) as tmp:
        write_mark(tmp, "dataset")
        files = {f"{name}.npy": _save_array(tmp, name, arr) for name, arr in arrays.items()}
        meta = {
            "format": "cml-dgl-dataset",
            "format_version": FORMAT_VERSION,
            "source": ds.source,
            "behaviors": list(ds.behaviors),
            "target": ds.target,
            "n_users": int(ds.n_users),
            "n_items": int(ds.n_items),
            "train_edges": ds.train_counts(),
            "valid_users": int(len(ds.valid)),
            "test_users": int(len(ds.test)),
            "n_negatives": int(arrays["test_negatives"].shape[1]),
            "options": ds.options,
            "seed": ds.seed,
            "id_map_checksum": ds.id_map_checksum(),
            "files": files,
        }
        atomic_write_json(tmp / "meta.json", meta)
    return Path(outdir)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    d = Path(path)
    mpath = d / "meta.json"
    if not d.is_dir():
        raise CmlError(f"{d}: not a dataset directory (run `cml preprocess` first)")
    if not mpath.is_file():
        raise CmlError(f"{mpath}: missing; {d} is not a cml-dgl dataset")
    try:
        meta = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CmlError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != "cml-dgl-dataset":
        raise CmlError(f"{mpath}: not a cml-dgl dataset description (field 'format')")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CmlError(f"{mpath}: format_version {version!r} is not supported "
                       f"(this cml-dgl reads version {FORMAT_VERSION}); re-run `cml preprocess`")
    for key in ("behaviors", "n_users", "n_items", "files"):
        if key not in meta:
            raise CmlError(f"{mpath}: field {key!r} is missing")
    behaviors, files = meta["behaviors"], meta["files"]
    if not isinstance(behaviors, list) or not all(isinstance(b, str) for b in behaviors):
        raise CmlError(f"{mpath}: field 'behaviors' must be a list of names, got {behaviors!r:.80}")
    for key in ("n_users", "n_items"):
        if type(meta[key]) is not int or meta[key] < 0:
            raise CmlError(f"{mpath}: field {key!r} must be a count >= 0, got {meta[key]!r:.80}")
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        raise CmlError(f"{mpath}: field 'files' must map file names to {{sha256, shape, dtype}}")
    return meta


def dropped_user_ids(ds: Dataset) -> np.ndarray | None:
    """The raw ids of the users the preprocessing filters dropped, read from the dataset folder
    (checksum verified) where it lists them; None where it does not (older or published datasets)."""
    if ds.dropped_user_ids is not None or ds.path is None:
        return ds.dropped_user_ids
    try:
        entry = read_meta(ds.path)["files"].get("dropped_user_ids.npy")
    except CmlError:
        return None
    fpath = Path(ds.path) / "dropped_user_ids.npy"
    if entry is None or not fpath.is_file() or sha256_file(fpath) != entry.get("sha256"):
        return None
    try:
        return np.load(fpath, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None


def load_dataset(path: str | os.PathLike, verify: bool = True) -> Dataset:
    """Read a dataset directory; with ``verify`` check every file's sha256 against meta.json."""
    d = Path(path)
    meta = read_meta(d)
    files = meta["files"]
    arrays: dict[str, np.ndarray] = {}
    names = list(_ARRAYS) + (["meta_users"] if "meta_users.npy" in files else [])
    for name in names:
        fname = f"{name}.npy"
        fpath = d / fname
        if fname not in files:
            raise CmlError(f"{d / 'meta.json'}: no entry for {fname} in 'files'")
        if not fpath.is_file():
            raise CmlError(f"{fpath}: missing (listed in meta.json)")
        if verify and sha256_file(fpath) != files[fname].get("sha256"):
            raise CmlError(f"{fpath}: checksum does not match meta.json (file changed or truncated)")
        try:
            arr = np.load(fpath, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CmlError(f"{fpath}: not a readable .npy array ({e})") from None
        kinds, ndim, _ = _ARRAYS.get(name, ("i", 1, None))
        if arr.dtype.kind not in kinds or arr.ndim != ndim:
            raise CmlError(f"{fpath}: expected a {ndim}-d array of kind {kinds!r}, "
                           f"got {arr.dtype} with shape {arr.shape}")
        if list(arr.shape) != list(files[fname].get("shape", arr.shape)):
            raise CmlError(f"{fpath}: shape {list(arr.shape)} differs from meta.json "
                           f"{files[fname].get('shape')}")
        arrays[name] = arr
    ds = Dataset(
        behaviors=list(meta["behaviors"]),
        n_users=int(meta["n_users"]),
        n_items=int(meta["n_items"]),
        meta_users=arrays.pop("meta_users", None),
        source=str(meta.get("source", "unknown")),
        options=dict(meta.get("options") or {}),
        seed=meta.get("seed"),
        path=d,
        checksums={name: str(entry.get("sha256")) for name, entry in files.items()},
        **arrays,
    )
    ds.validate()
    return ds
