"""The preprocessing pipeline behind ``cml preprocess``: raw log or published split -> dataset dir.

Raw sources: read (:mod:`cml_dgl.data.sources`) -> remap, dedupe, filter
(:mod:`cml_dgl.data.events`) -> leave-one-out and stored candidates (:mod:`cml_dgl.data.split`)
-> :func:`cml_dgl.data.dataset.write_dataset` (a temporary sibling renamed into place).
Published splits (``cml-pickle``, ``lists``): the training edges and test items are kept; the
published validation pairs too where there are some, else a validation item is carved (unless
``valid=False``) and the candidates drawn. Whether a held-out pair's auxiliary edges leave training
(``held_out_auxiliary``, see :mod:`cml_dgl.data.split`) defaults to ``drop`` for raw logs and, for a
published split, to what its test split did: measured on the test pairs (:func:`auxiliary_overlap`),
``removed`` when no test pair has an auxiliary training edge, else ``kept``. Every option lands in
``Dataset.options`` (and ``meta.json``), with counts of what each step did under ``"stats"``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from cml_dgl.data import sources
from cml_dgl.data.dataset import N_NEGATIVES, Dataset, write_dataset
from cml_dgl.data.events import build_interactions
from cml_dgl.data.sources import adjacency_lists, cml_pickle
from cml_dgl.data.sources.cml_pickle import PublishedSplit
from cml_dgl.data.sources.tabular import DEFAULT_BLOCK_BYTES
from cml_dgl.data.split import (HELD_OUT_AUXILIARY, draw_negatives, hold_out_latest, hold_out_random,
                                leave_one_out, pairs, pairs_in_behaviors)
from cml_dgl.errors import CmlError
from cml_dgl.outputs import check_output

DEFAULT_SEED = 2023
AUXILIARY_CHOICES = ("auto",) + HELD_OUT_AUXILIARY


def _purchase_keys(user: np.ndarray, item: np.ndarray, n_items: int, *extra: np.ndarray) -> np.ndarray:
    """Sorted unique ``user * n_items + item`` keys of purchases (plus extra (m, 2) pairs)."""
    parts = [user.astype(np.int64) * n_items + item]
    parts += [p[:, 0].astype(np.int64) * n_items + p[:, 1] for p in extra if len(p)]
    return np.unique(np.concatenate(parts))


def _negatives(valid: np.ndarray, test: np.ndarray, exclude: np.ndarray, n_items: int, n: int,
               seed: int, user_ids: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Stored candidates: independent streams of ``seed`` for test (first) and validation."""
    test_rng, valid_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))

    def describe(u: int) -> str:
        raw = user_ids[u]
        return f"{str(raw)!r} (internal {u})" if user_ids.dtype.kind in "UO" else f"{int(raw)} (internal {u})"

    try:
        test_neg = draw_negatives(test[:, 0], exclude, n_items, n, test_rng, describe)
        valid_neg = draw_negatives(valid[:, 0], exclude, n_items, n, valid_rng, describe)
    except CmlError as e:
        raise CmlError(f"{what}: {e}") from None
    return valid_neg, test_neg


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _input_name(path: Path) -> str:
    """The input as recorded in the dataset: an absolute path, or ``-`` for standard input."""
    if str(path) == "-":
        return "-"
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):  # a symlink loop: reading it fails with its own message
        return os.path.abspath(path)


def _check_options(negatives: int, min_purchases: int | None, min_user_interactions: int,
                   min_item_interactions: int, block_bytes: int, held_out_auxiliary: str) -> None:
    if held_out_auxiliary not in AUXILIARY_CHOICES:
        raise CmlError(f"--held-out-auxiliary: expected one of {', '.join(AUXILIARY_CHOICES)}, "
                       f"got {held_out_auxiliary!r}")
    if negatives < 1:
        raise CmlError(f"--negatives: expected a positive number, got {negatives}")
    for name, value in (("--min-purchases", min_purchases), ("--min-user-interactions", min_user_interactions),
                        ("--min-item-interactions", min_item_interactions)):
        if value is not None and value < 0:
            raise CmlError(f"{name}: expected a number >= 0, got {value}")
    if block_bytes < 1024:
        raise CmlError(f"--block-bytes: expected at least 1024, got {block_bytes}")


STEPS = ("dedupe and filter", "hold out test/validation", "draw negatives", "write dataset")


class _Steps:
    """The steps after the input is read (which has its own bar), on one progress line on stderr:
    ``[k/n] step (elapsed)``. The line appears with the first step, so an unreadable input
    leaves only its error line."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.bar = quiet, None

    def __call__(self, name: str) -> None:
        k = STEPS.index(name)
        if self.bar is None:
            self.bar = tqdm(total=len(STEPS), initial=k, file=sys.stderr, disable=self.quiet,
                            leave=False, bar_format="{desc} ({elapsed})")
        else:
            self.bar.update(1)
        self.bar.set_description_str(f"[{k + 1}/{len(STEPS)}] {name}", refresh=True)

    def __enter__(self) -> "_Steps":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _from_raw(source: sources.Source, path: Path, behaviors: Sequence[str] | None, min_purchases: int,
              min_user_interactions: int, min_item_interactions: int, valid: bool, negatives: int,
              seed: int, block_bytes: int, quiet: bool, held_out_auxiliary: str,
              options: dict[str, Any], step: _Steps) -> Dataset:
    events = sources.read_raw(source, path, behaviors, block_bytes=block_bytes, quiet=quiet)
    options["time_unit"] = events.time_unit
    step(STEPS[0])
    inter = build_interactions(events, min_purchases=min_purchases,
                               min_user_interactions=min_user_interactions,
                               min_item_interactions=min_item_interactions, what=str(path))
    target = inter.target
    buy = inter.behavior == target
    exclude = _purchase_keys(inter.user[buy], inter.item[buy], inter.n_items)
    del buy
    auxiliary = "drop" if held_out_auxiliary == "auto" else held_out_auxiliary
    step(STEPS[1])
    keep, valid_pairs, test_pairs = leave_one_out(inter.user, inter.item, inter.behavior, inter.time,
                                                  inter.n_users, target, valid, auxiliary)
    if len(test_pairs) == 0:
        raise CmlError(f"{path}: no {inter.behaviors[target]!r} (target) interaction is left after the "
                       f"filters, so there is nothing to hold out for testing (min_purchases="
                       f"{min_purchases}); the log needs purchases")
    step(STEPS[2])
    valid_neg, test_neg = _negatives(valid_pairs, test_pairs, exclude, inter.n_items, negatives, seed,
                                     inter.user_ids, str(path))
    stats = dict(inter.stats, held_out_edges=int(len(keep) - np.count_nonzero(keep)),
                 held_out_auxiliary=auxiliary)
    options["stats"] = stats
    return Dataset(
        behaviors=list(inter.behaviors), n_users=inter.n_users, n_items=inter.n_items,
        train_user=inter.user[keep], train_item=inter.item[keep], train_behavior=inter.behavior[keep],
        train_time=inter.time[keep], valid=valid_pairs, test=test_pairs, valid_negatives=valid_neg,
        test_negatives=test_neg, user_ids=inter.user_ids, item_ids=inter.item_ids, meta_users=None,
        source=source.name, options=options, seed=seed, dropped_user_ids=inter.dropped_user_ids,
    )


def auxiliary_overlap(split: PublishedSplit, test: np.ndarray) -> dict[str, Any]:
    """How a published test split treats the held-out pair's auxiliary edges, measured.

    ``pairs`` of the ``of`` test pairs have a training edge of some auxiliary behavior (per behavior
    in ``by_behavior``); ``train_purchases_fraction`` is the same share among the training
    purchases, for comparison. ``test_split`` is ``removed`` when no test pair has one (the split
    took the pair out of every behavior), else ``kept``.
    """
    target = len(split.behaviors) - 1
    found = pairs_in_behaviors(split.user, split.item, split.behavior, test, split.n_items, target)
    buy = split.behavior == target
    buys = np.stack([split.user[buy], split.item[buy]], axis=1)
    bought = pairs_in_behaviors(split.user, split.item, split.behavior, buys, split.n_items, target)
    in_aux = found.any(axis=1)
    return {"pairs": int(in_aux.sum()), "of": int(len(test)),
            "fraction": round(float(in_aux.mean()), 6) if len(test) else 0.0,
            "by_behavior": {b: int(found[:, k].sum()) for k, b in enumerate(split.behaviors[:target])},
            "train_purchases_fraction": round(float(bought.any(axis=1).mean()), 6) if len(buys) else 0.0,
            "test_split": "kept" if in_aux.any() else "removed"}


def _carve_rng(seed: int) -> np.random.Generator:
    """The stream that picks validation items of an untimed split: the third child of ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])


def _from_published(source: sources.Source, path: Path, behaviors: Sequence[str] | None, valid: bool,
                    negatives: int, seed: int, held_out_auxiliary: str,
                    options: dict[str, Any], step: _Steps, auxiliary_holdouts: bool = False) -> Dataset:
    if source.name == "lists":
        split = adjacency_lists.read(path, behaviors, auxiliary_holdouts=auxiliary_holdouts)
    else:
        split = cml_pickle.read(path, behaviors)
    step(STEPS[1])
    options["behaviors"] = list(split.behaviors)
    if not split.timed:
        options["time_unit"] = "none"
    target = len(split.behaviors) - 1
    test = split.test.astype(np.int32)
    overlap = auxiliary_overlap(split, test)
    carve = valid and split.valid is None
    if held_out_auxiliary != "auto" and not carve:
        why = "--no-valid" if not valid else f"{path} publishes its validation split"
        raise CmlError(f"--held-out-auxiliary {held_out_auxiliary}: no validation item is carved "
                       f"({why}), and the published test split is kept as it is")
    if held_out_auxiliary == "before" and not split.timed:
        raise CmlError(f"--held-out-auxiliary before: {path} holds no times (adjacency lists), so "
                       "'before the purchase' is unknown; use keep or drop")
    auxiliary = (held_out_auxiliary if held_out_auxiliary != "auto"
                 else "keep" if overlap["test_split"] == "kept" else "drop")
    published_valid = (split.valid if split.valid is not None else np.zeros((0, 2))).astype(np.int32)
    buy = split.behavior == target
    exclude = _purchase_keys(split.user[buy], split.item[buy], split.n_items, test, published_valid)
    del buy
    keep = np.ones(len(split.user), dtype=bool)
    valid_pairs = published_valid if valid else np.zeros((0, 2), dtype=np.int32)
    if carve:
        has_test = np.zeros(split.n_users, dtype=bool)
        has_test[test[:, 0]] = True
        if split.timed:
            held, keep = hold_out_latest(split.user, split.item, split.behavior, split.time,
                                         split.n_users, target, has_test[split.user], auxiliary)
        else:
            held, keep = hold_out_random(split.user, split.item, split.behavior, split.n_users, target,
                                         has_test[split.user], _carve_rng(seed), auxiliary)
        valid_pairs = pairs(held)
    ids = np.arange(split.n_users, dtype=np.int64)
    step(STEPS[2])
    valid_neg, test_neg = _negatives(valid_pairs, test, exclude, split.n_items, negatives, seed, ids,
                                     str(path))
    options["stats"] = {"published_train_edges": int(len(split.user)),
                        "held_out_edges": int(len(keep) - np.count_nonzero(keep)),
                        "published_test_users": int(len(test)), **split.stats,
                        "test_pairs_in_auxiliary": overlap,
                        "held_out_auxiliary": auxiliary if carve else None}
    if split.valid is not None:
        options["stats"]["published_valid_users"] = int(len(split.valid))
    return Dataset(
        behaviors=list(split.behaviors), n_users=split.n_users, n_items=split.n_items,
        train_user=split.user[keep], train_item=split.item[keep], train_behavior=split.behavior[keep],
        train_time=split.time[keep], valid=valid_pairs, test=test, valid_negatives=valid_neg,
        test_negatives=test_neg, user_ids=ids, item_ids=np.arange(split.n_items, dtype=np.int64),
        meta_users=split.meta_users, source=source.name, options=options, seed=seed,
    )


def preprocess(source: str, input: str | os.PathLike, outdir: str | os.PathLike, *,
               behaviors: Sequence[str] | None = None, min_purchases: int | None = None,
               min_user_interactions: int = 1, min_item_interactions: int = 1, valid: bool = True,
               negatives: int = N_NEGATIVES, seed: int = DEFAULT_SEED, overwrite: bool = False,
               quiet: bool = False, block_bytes: int = DEFAULT_BLOCK_BYTES,
               held_out_auxiliary: str = "auto", auxiliary_holdouts: bool = False) -> Path:
    """Turn ``input`` of ``source`` into a dataset directory at ``outdir``; returns its path.

    ``min_purchases`` defaults to the source's rule (taobao/tmall and ijcai15: 3, retailrocket and
    csv: 2); the interaction filters default to 1 (off). Filters do not apply to published splits
    (``cml-pickle``, ``lists``). ``held_out_auxiliary`` is ``auto`` or one of
    :data:`cml_dgl.data.split.HELD_OUT_AUXILIARY` (module docstring). ``auxiliary_holdouts``
    (``lists``, MB-CGCN's layout): the auxiliary behaviors' ``test.txt`` become training edges.
    An existing ``outdir`` is refused unless ``overwrite``. Raises CmlError on any bad input, and
    then leaves no ``outdir`` behind.
    """
    src = sources.resolve(source)
    _check_options(negatives, min_purchases, min_user_interactions, min_item_interactions, block_bytes,
                   held_out_auxiliary)
    out = check_output(outdir, "dataset", overwrite=overwrite, inputs=[input])
    path = Path(input)
    if src.min_purchases is None and str(input) == "-":
        raise CmlError(f"{src.name} reads a published split folder; '-' (standard input) cannot be one")
    options: dict[str, Any] = {
        "source": src.name, "input": _input_name(path), "input_bytes": _size(path),
        "behaviors": list(behaviors or src.behaviors or ()), "valid": bool(valid),
        "negatives": int(negatives), "seed": int(seed), "held_out_auxiliary": held_out_auxiliary,
    }
    if auxiliary_holdouts:
        if src.name != "lists":
            raise CmlError(f"--auxiliary-holdouts applies to the lists source only (MB-CGCN's per-behavior "
                           f"test.txt files), not {src.name}")
        options["auxiliary_holdouts"] = True
    if src.min_purchases is None and (min_purchases is not None or min_user_interactions != 1
                                      or min_item_interactions != 1):
        raise CmlError(f"{src.name} keeps a published split as it is: --min-purchases, "
                       "--min-user-interactions and --min-item-interactions do not apply")
    with _Steps(quiet) as step:
        if src.min_purchases is None:
            ds = _from_published(src, path, behaviors, valid, negatives, seed, held_out_auxiliary, options,
                                 step, auxiliary_holdouts)
        else:
            mp = src.min_purchases if min_purchases is None else int(min_purchases)
            options.update(min_purchases=mp, min_user_interactions=int(min_user_interactions),
                           min_item_interactions=int(min_item_interactions), block_bytes=int(block_bytes))
            ds = _from_raw(src, path, behaviors, mp, min_user_interactions, min_item_interactions, valid,
                           negatives, seed, block_bytes, quiet, held_out_auxiliary, options, step)
        step(STEPS[3])
        return write_dataset(ds, out, overwrite=overwrite)
