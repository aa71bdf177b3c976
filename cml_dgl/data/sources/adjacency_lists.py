"""Published splits as user-item adjacency lists, the layouts of MB-CGCN, CRGCN, GHCF and EHCF.

Every file is plain text, one line per user: ``user item item ...``, whitespace-separated (spaces
or tabs), 0-based integer ids. A user may take several lines (one ``user item`` pair per line is
the same format); repeated entries collapse to one edge. Blank lines are skipped. Two layouts:

- ``mb-cgcn`` (MB-CGCN, CRGCN): one folder per behavior, ``<behavior>/train.txt``; the target's
  ``test.txt`` is the test split and its ``valid.txt`` or ``validation.txt``, when present, the
  validation split. The other behaviors' ``test.txt`` files are per-behavior holdouts (MB-CGCN
  pre-trains on them), not targets, and are not read unless ``auxiliary_holdouts``: then each
  one present becomes training edges of its behavior, as in CascadingRank's copy of MB-CGCN's
  Tmall split (one ``user item`` pair per line, ids within the training files').
- ``ghcf`` (GHCF, EHCF): one folder holding ``train.txt`` (the target's training edges), one
  ``<behavior>.txt`` per auxiliary behavior, ``test.txt`` and optionally ``valid.txt`` /
  ``validation.txt``.

The layout is recognised from the files. The behavior order, target last, comes from
``--behaviors`` or, when the names are the usual ones (view/pv/click, fav/collect, cart, buy), from
the purchase funnel. ``--behaviors`` may not change the target: where the folder shows it (the
behavior named ``buy``/``purchase``, the one folder holding a validation file, or GHCF's
``train.txt``), the last name must be that behavior.

Test and validation files hold one ``user item`` line per user. The numbers of users and items
are one more than the largest ids of the training files; a test or validation id outside them, a
test or validation pair that is also a training purchase, a user with two test (validation) lines
and a validation pair equal to the user's test pair are errors naming the file and line. The
files carry no times: every edge gets time 0.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cml_dgl.data.events import dedupe
from cml_dgl.data.sources.cml_pickle import PublishedSplit
from cml_dgl.errors import CmlError

TRAIN, TEST = "train.txt", "test.txt"
VALID_FILES = ("valid.txt", "validation.txt")
TARGET_NAMES = ("buy", "purchase")
# purchase-funnel rank of the usual auxiliary behavior names: the order they are put in
FUNNEL = {"view": 0, "pv": 0, "click": 0, "browse": 0, "fav": 1, "collect": 1, "cart": 2}
_MAX_ID = np.iinfo(np.int32).max - 1
_BAD_CHAR = re.compile(rb"[^0-9 \t\r\n]")


@dataclass(frozen=True)
class Entries:
    """The (user, item) entries of one file and the physical line of each."""

    path: Path
    user: np.ndarray  # int64
    item: np.ndarray  # int64
    line: np.ndarray  # int64, 1-based


def _token_at(data: bytes, pos: int) -> str:
    lo = max(data.rfind(w, 0, pos) for w in (b" ", b"\t", b"\n")) + 1
    hi = min((j for j in (data.find(w, pos) for w in (b" ", b"\t", b"\r", b"\n")) if j >= 0),
             default=len(data))
    return data[lo:hi][:40].decode("utf-8", errors="backslashreplace")


def parse(path: Path, shape: str, pairs_only: bool = False) -> Entries:
    """Read one adjacency-list file; ``shape`` names the expected line in errors.

    With ``pairs_only`` every non-blank line must be exactly ``user item``.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CmlError(f"{path}: cannot read ({e.strerror or e})") from None
    bad = _BAD_CHAR.search(data)
    if bad:
        line = data.count(b"\n", 0, bad.start()) + 1
        raise CmlError(f"{path}: line {line}: expected whitespace-separated non-negative integer "
                       f"ids ({shape}), got {_token_at(data, bad.start())!r}")
    lines = data.split(b"\n")
    counts = np.fromiter((len(x.split()) for x in lines), dtype=np.int64, count=len(lines))
    if not counts.any():
        raise CmlError(f"{path}: empty file (expected lines '{shape}')")
    line_no = np.flatnonzero(counts) + 1
    counts = counts[counts > 0]
    if pairs_only and np.any(counts != 2):
        r = int(np.flatnonzero(counts != 2)[0])
        raise CmlError(f"{path}: line {line_no[r]}: expected '{shape}' (one item per user), got "
                       f"{counts[r]} ids")
    ends = np.cumsum(counts)
    tokens = np.array(data.split())
    too_long = (np.flatnonzero(np.char.str_len(tokens) > len(str(_MAX_ID)))
                if tokens.dtype.itemsize > len(str(_MAX_ID)) else [])
    values = None if len(too_long) else tokens.astype(np.int64)
    if values is None or int(values.max()) > _MAX_ID:
        r = int(too_long[0]) if values is None else int(np.argmax(values))
        line = int(line_no[np.searchsorted(ends, r, side="right")])
        raise CmlError(f"{path}: line {line}: id {tokens[r].decode()[:20]} is too large "
                       f"(ids up to {_MAX_ID})")
    del tokens
    starts = ends - counts
    per_line = counts - 1
    user = np.repeat(values[starts], per_line)
    is_item = np.ones(len(values), dtype=bool)
    is_item[starts] = False
    item = values[is_item]
    line = np.repeat(line_no, per_line)
    if len(item) == 0:
        raise CmlError(f"{path}: no (user, item) entries, only users (expected lines '{shape}')")
    return Entries(path, user, item, line)


def _one_per_user(e: Entries, what: str) -> None:
    order = np.argsort(e.user, kind="stable")
    same = np.flatnonzero(e.user[order][1:] == e.user[order][:-1])
    if same.size:
        first, second = order[same[0]], order[same[0] + 1]
        raise CmlError(f"{e.path}: line {e.line[second]}: user {e.user[second]} has a second {what} "
                       f"item (first on line {e.line[first]}); expected one {what} item per user")


def _in_range(e: Entries, n_users: int, n_items: int, trains: str) -> None:
    for ids, n, kind in ((e.user, n_users, "user"), (e.item, n_items, "item")):
        out = np.flatnonzero(ids >= n)
        if out.size:
            r = int(out[0])
            raise CmlError(f"{e.path}: line {e.line[r]}: {kind} {ids[r]} is outside the {n:,} "
                           f"{kind}s (ids 0..{n - 1}) that {trains} imply")


def _not_in(e: Entries, keys: np.ndarray, n_items: int, why: str) -> None:
    hit = np.flatnonzero(np.isin(e.user * n_items + e.item, keys))
    if hit.size:
        r = int(hit[0])
        raise CmlError(f"{e.path}: line {e.line[r]}: the pair user {e.user[r]} item {e.item[r]} "
                       f"{why}")


def _funnel_order(names: Sequence[str]) -> list[str] | None:
    """The names in funnel order when all are usual auxiliary names, else None."""
    if not all(n in FUNNEL for n in names):
        return None
    return sorted(names, key=lambda n: (FUNNEL[n], n))


def _check_target(folder: Path, order: list[str], target: str | None, why: str) -> None:
    if target is not None and order[-1] != target:
        placed = (f"puts {order[-1]!r} last" if target in order
                  else f"leaves out {target!r}")
        raise CmlError(f"{folder}: --behaviors {','.join(order)} {placed}, but {target!r} is the "
                       f"target here ({why}); name it last")


def _valid_file(folder: Path) -> Path | None:
    found = [folder / n for n in VALID_FILES if (folder / n).is_file()]
    if len(found) > 1:
        raise CmlError(f"{folder}: holds both {found[0].name} and {found[1].name}; keep one "
                       "validation file")
    return found[0] if found else None


@dataclass(frozen=True)
class Layout:
    """Which files a folder's behaviors, test and validation split are read from."""

    name: str
    behaviors: list[str]
    train: dict[str, Path]
    test: Path
    valid: Path | None


def _mb_cgcn(folder: Path, subs: list[Path], behaviors: Sequence[str] | None) -> Layout:
    names = [d.name for d in subs]
    with_valid = [d.name for d in subs if _valid_file(d) is not None]
    named = [n for n in names if n in TARGET_NAMES]
    if behaviors:
        missing = [b for b in behaviors if b not in names]
        if missing:
            raise CmlError(f"{folder}: no file {missing[0]}/{TRAIN} for behavior {missing[0]!r} "
                           f"(found {TRAIN} in: {', '.join(names)})")
        order = list(behaviors)
        if len(named) == 1:
            _check_target(folder, order, named[0], "the purchase")
        if len(with_valid) == 1:
            _check_target(folder, order, with_valid[0], f"only {with_valid[0]}/ holds a validation file")
    else:
        aux = _funnel_order([n for n in names if n not in TARGET_NAMES])
        if len(named) != 1 or aux is None:
            raise CmlError(f"{folder}: cannot tell the order of behaviors {', '.join(names)} (the "
                           f"folders holding {TRAIN}); pass --behaviors a,b,...,target with the "
                           "target (purchase) last")
        order = aux + named
        if len(with_valid) == 1 and with_valid[0] != order[-1]:
            raise CmlError(f"{folder}: only {with_valid[0]}/ holds a validation file, but "
                           f"{order[-1]!r} is the target (the purchase); pass --behaviors with the "
                           "target last")
    target = folder / order[-1]
    test = target / TEST
    if not test.is_file():
        raise CmlError(f"{test}: no such file (the test split of the target {order[-1]!r}; MB-CGCN's "
                       f"layout keeps it next to {order[-1]}/{TRAIN})")
    return Layout("mb-cgcn", order, {b: folder / b / TRAIN for b in order}, test, _valid_file(target))


def _ghcf(folder: Path, behaviors: Sequence[str] | None) -> Layout:
    skip = {TRAIN, TEST, *VALID_FILES}
    aux_files = sorted(p.name[:-4] for p in folder.glob("*.txt") if p.is_file() and p.name not in skip)
    if behaviors:
        order = list(behaviors)
        if (folder / f"{order[-1]}.txt").is_file():
            raise CmlError(f"{folder}: --behaviors puts {order[-1]!r} last, the target, whose training "
                           f"edges are {TRAIN} in this layout, but {order[-1]}.txt is an auxiliary "
                           "behavior's file; name the target last")
        if order[-1] in FUNNEL:
            raise CmlError(f"{folder}: --behaviors puts {order[-1]!r} last, an auxiliary behavior's "
                           f"name, but the target here is {TRAIN} (the purchases); name the target last")
        missing = [b for b in order[:-1] if b not in aux_files]
        if missing:
            raise CmlError(f"{folder}: no file {missing[0]}.txt for behavior {missing[0]!r} (found "
                           f"auxiliary files: {', '.join(f + '.txt' for f in aux_files) or 'none'})")
    else:
        aux = _funnel_order(aux_files)
        if aux is None:
            raise CmlError(f"{folder}: cannot tell the behaviors of "
                           f"{', '.join(f + '.txt' for f in aux_files)}; pass --behaviors "
                           f"a,b,...,target with the target ({TRAIN}) last")
        order = aux + [TARGET_NAMES[0]]
    test = folder / TEST
    if not test.is_file():
        raise CmlError(f"{test}: no such file (GHCF's layout keeps the test split next to {TRAIN})")
    train = {b: folder / f"{b}.txt" for b in order[:-1]}
    train[order[-1]] = folder / TRAIN
    return Layout("ghcf", order, train, test, _valid_file(folder))


def layout(folder: Path, behaviors: Sequence[str] | None = None) -> Layout:
    """Recognise the folder's layout and the files of each behavior (module docstring)."""
    if not folder.exists():
        raise CmlError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise CmlError(f"{folder}: expected a folder of adjacency lists (<behavior>/{TRAIN} folders, "
                       f"or {TRAIN} with <behavior>.txt and {TEST}), got a file")
    subs = sorted(d for d in folder.iterdir() if d.is_dir() and (d / TRAIN).is_file())
    top = (folder / TRAIN).is_file()
    if top and subs:
        raise CmlError(f"{folder}: holds both {TRAIN} (GHCF's layout) and {subs[0].name}/{TRAIN} "
                       "(MB-CGCN's); keep one layout")
    if subs:
        return _mb_cgcn(folder, subs, behaviors)
    if top:
        return _ghcf(folder, behaviors)
    raise CmlError(f"{folder}: no {TRAIN}: expected MB-CGCN's layout (<behavior>/{TRAIN}, the "
                   f"target's {TEST}) or GHCF's ({TRAIN}, <behavior>.txt, {TEST})")


def _holdout_files(d: Path, lay: Layout) -> dict[int, Path]:
    """The auxiliary behaviors' ``test.txt`` files of an MB-CGCN folder, by behavior index."""
    if lay.name != "mb-cgcn":
        raise CmlError(f"{d}: --auxiliary-holdouts reads MB-CGCN's <behavior>/{TEST} files; GHCF's layout "
                       "has no per-behavior holdouts")
    found = {k: d / b / TEST for k, b in enumerate(lay.behaviors[:-1]) if (d / b / TEST).is_file()}
    if not found:
        raise CmlError(f"{d}: --auxiliary-holdouts: no auxiliary behavior has a {TEST} "
                       f"(looked in {', '.join(b + '/' for b in lay.behaviors[:-1])})")
    return found


def read(folder: str | os.PathLike, behaviors: Sequence[str] | None = None,
         auxiliary_holdouts: bool = False) -> PublishedSplit:
    """Load an adjacency-list split folder in either layout (rules in the module docstring)."""
    d = Path(folder)
    lay = layout(d, behaviors)
    holdout_files = _holdout_files(d, lay) if auxiliary_holdouts else {}
    train = [parse(lay.train[b], "user item item ...") for b in lay.behaviors]
    n_users = int(max(e.user.max() for e in train)) + 1
    n_items = int(max(e.item.max() for e in train)) + 1
    if not any((e.user == 0).any() for e in train) and not any((e.item == 0).any() for e in train):
        raise CmlError(f"{d}: no training file uses user 0 or item 0; expected 0-based ids "
                       "(these look 1-based)")
    trains = "the training files"
    holdouts = {k: parse(p, "user item", pairs_only=True) for k, p in holdout_files.items()}
    for e in holdouts.values():
        _in_range(e, n_users, n_items, trains)
    train = [Entries(e.path, np.concatenate([e.user, holdouts[k].user]), np.concatenate([e.item, holdouts[k].item]),
                     np.concatenate([e.line, holdouts[k].line])) if k in holdouts else e
             for k, e in enumerate(train)]
    splits = {}
    for what, path in (("test", lay.test), ("validation", lay.valid)):
        if path is None:
            continue
        e = parse(path, "user item", pairs_only=True)
        _in_range(e, n_users, n_items, trains)
        _one_per_user(e, what)
        splits[what] = e
    user = np.concatenate([e.user for e in train])
    item = np.concatenate([e.item for e in train])
    beh = np.concatenate([np.full(len(e.user), k, dtype=np.int8) for k, e in enumerate(train)])
    user, item, beh, time = dedupe(user, item, beh, np.zeros(len(user), np.int64), n_users, n_items,
                                   len(train))
    target = len(lay.behaviors) - 1
    buys = np.unique(user[beh == target].astype(np.int64) * n_items + item[beh == target])
    bought = f"is also a training purchase ({lay.train[lay.behaviors[-1]].relative_to(d)})"
    pairs: dict[str, np.ndarray] = {}
    for what, e in splits.items():
        _not_in(e, buys, n_items, bought)
        order = np.argsort(e.user, kind="stable")
        pairs[what] = np.stack([e.user[order], e.item[order]], axis=1)
    if "validation" in splits:
        test_keys = np.unique(pairs["test"][:, 0] * n_items + pairs["test"][:, 1])
        _not_in(splits["validation"], test_keys, n_items, f"is also the user's test pair ({lay.test.name})")
    stats: dict[str, Any] = {
        "layout": lay.name,
        "files": [str(p.relative_to(d)) for p in
                  [*lay.train.values(), lay.test] + ([lay.valid] if lay.valid else []) + list(holdout_files.values())],
        "duplicate_entries": int(sum(len(e.user) for e in train) - len(user)),
    }
    if holdouts:
        stats["auxiliary_holdouts"] = {lay.behaviors[k]: int(len(e.user)) for k, e in holdouts.items()}
    return PublishedSplit(behaviors=lay.behaviors, n_users=n_users, n_items=n_items, user=user,
                          item=item, behavior=beh, time=time, test=pairs["test"], meta_users=None,
                          valid=pairs.get("validation"), timed=False, stats=stats)
