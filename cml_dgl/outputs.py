"""Where a command may write: output folders checked before the work, and cml's ownership marks.

Every folder a command creates carries a mark, ``.cml-output``: a small JSON file naming its kind
(``dataset``, ``run``, ``export``, ``report``, ``demo``). :func:`check_output` runs before any
input is read and refuses, with one line, an output that

- is the current folder or one above it, or holds one of the command's inputs;
- is a file, a broken link or a symbolic-link loop, or lies under a file;
- ends in ``..``, or goes up from a name that is not a folder;
- cannot be created (a read-only or virtual file system, no permission, a name too long);
- exists and is not empty, unless ``overwrite`` and the folder is cml's own of the same kind.

A folder is cml's own of a kind when it carries that kind's mark, or, for folders written before
the mark existed, when it has the kind's known structure (:func:`folder_kind`). A folder that
``--overwrite`` replaces as a whole must moreover hold nothing but the files cml writes there
(:func:`foreign_entry`): a stranger's file in it is never deleted.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

from cml_dgl.errors import CmlError

MARK = ".cml-output"
KINDS = {
    "dataset": "a dataset folder written by cml preprocess",
    "run": "a run directory written by cml train",
    "export": "an embeddings folder written by cml export-embeddings",
    "report": "a report folder written by cml report",
    "demo": "a demo folder written by cml demo",
}
REPORT_FILES = ("losses.png", "metrics.png", "meta_weights.png", "report.md")
_TEMP = re.compile(r"^\..*\.(tmp|old)-")  # fsutil's temporaries, left by an interrupted write
_DEMO_ENTRIES = {"UserBehavior.csv", "dataset", "run-cml", "run-mf", "run-pop", "embeddings",
                 "summary.json"}


def write_mark(directory: str | os.PathLike, kind: str) -> None:
    """Mark ``directory`` as cml's own folder of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    from cml_dgl.fsutil import atomic_write_json

    atomic_write_json(Path(directory) / MARK, {"kind": kind, "written_by": "cml-dgl"})


def _json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def folder_kind(path: str | os.PathLike) -> str | None:
    """The kind of cml folder ``path`` is, or None when cml did not write it.

    The mark decides; without one (folders written before marks existed) the known structure:
    a dataset has a ``meta.json`` with ``"format": "cml-dgl-dataset"``; a run a ``config.yaml``
    and a ``run.json`` recording an ``id_map_checksum``; an embeddings folder a ``manifest.json``
    with ``id_map_checksum`` and ``tables``; a demo folder a ``summary.json`` with ``figures``
    and ``embeddings``; a report folder only the files ``cml report`` writes, ``report.md`` among them.
    """
    d = Path(path)
    mark = _json(d / MARK)
    if mark is not None:
        kind = mark.get("kind")
        return kind if kind in KINDS else None
    meta = _json(d / "meta.json")
    if meta is not None and meta.get("format") == "cml-dgl-dataset":
        return "dataset"
    run = _json(d / "run.json")
    if run is not None and "id_map_checksum" in run and (d / "config.yaml").is_file():
        return "run"
    manifest = _json(d / "manifest.json")
    if manifest is not None and {"id_map_checksum", "tables"} <= set(manifest):
        return "export"
    summary = _json(d / "summary.json")
    if summary is not None and {"figures", "embeddings"} <= set(summary):
        return "demo"
    try:
        names = {p.name for p in d.iterdir()}
    except OSError:
        return None
    if "report.md" in names and names <= set(REPORT_FILES):
        return "report"
    return None


def foreign_entry(path: str | os.PathLike, kind: str) -> str | None:
    """The first entry of ``path`` that a command of ``kind`` does not write there, or None."""
    d = Path(path)
    listed: set[str] = set()
    if kind in ("dataset", "export"):  # the files its meta.json / manifest.json lists
        files = (_json(d / ("meta.json" if kind == "dataset" else "manifest.json")) or {}).get("files")
        listed = set(files) if isinstance(files, dict) else set()
    for p in sorted(d.iterdir()):
        name = p.name
        if name == MARK or _TEMP.match(name):
            continue
        if kind == "dataset":
            ok = name == "meta.json" or (name in listed and p.is_file())
        elif kind == "export":
            ok = name == "manifest.json" or name in listed
        elif kind == "report":
            ok = name in REPORT_FILES
        elif kind == "demo":
            ok = name in _DEMO_ENTRIES
        else:  # a run directory is never replaced as a whole: `cml train` deletes only its own files
            ok = True
        if not ok:
            return name
    return None


def _resolve(p: Path, what: str) -> Path:
    try:
        return p.resolve()
    except RuntimeError:  # python < 3.13: a symlink loop
        raise CmlError(f"{what} {p}: a symbolic link loop (too many levels of symbolic links)") from None
    except OSError as e:
        raise CmlError(f"{what} {p}: cannot be resolved ({e.strerror or e})") from None


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _lstat(p: Path, what: str) -> os.stat_result | None:
    """``os.lstat``; None when nothing is there; a one-line CmlError for the other failures."""
    try:
        return os.lstat(p)
    except ValueError:
        raise CmlError(f"{what} {p!s:.200}: a path cannot hold a NUL character") from None
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ENAMETOOLONG):
            return None  # reported by the walk up to the nearest existing folder
        if e.errno == errno.ELOOP:
            raise CmlError(f"{what} {p}: a symbolic link loop (too many levels of symbolic links)") from None
        raise CmlError(f"{what} {p}: cannot be examined ({e.strerror or e})") from None


def _check_parts(p: Path, what: str) -> None:
    """No ``..`` last (the output would have no name of its own), nor after a name that is not a
    folder (creating the path would leave that name behind as a stray folder)."""
    if p.name == "..":
        raise CmlError(f"{what} {p}: ends in '..'; name the output folder itself")
    for k, part in enumerate(p.parts):
        if part == ".." and k and not os.path.isdir(Path(*p.parts[:k])):
            raise CmlError(f"{what} {p}: goes up ('..') from {Path(*p.parts[:k])}, which is not a folder")


def _check_creatable(p: Path, what: str) -> None:
    """``p`` does not exist: the nearest existing folder above it must accept new folders, and
    every missing name must fit the file system. Probed with a temporary folder, then removed."""
    missing = [p.name]
    anc = p.parent
    while _lstat(anc, what) is None and anc != anc.parent:
        missing.append(anc.name)
        anc = anc.parent
    if not anc.is_dir():
        raise CmlError(f"{what} {p}: cannot be created, {anc} is a file, not a folder")
    try:
        name_max, path_max = os.pathconf(anc, "PC_NAME_MAX"), os.pathconf(anc, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for name in missing:
        size = len(os.fsencode(name))
        if size > name_max:
            raise CmlError(f"{what} {name[:40]}...: a name of {size} bytes cannot be created, the file "
                           f"system allows at most {name_max}")
    size = len(os.fsencode(os.path.abspath(p)))
    if size >= path_max:
        raise CmlError(f"{what} {str(p)[:40]}...: a path of {size} bytes cannot be created, the file "
                       f"system allows at most {path_max - 1}")
    try:
        probe = tempfile.mkdtemp(prefix=".cml-probe-", dir=anc)
    except OSError as e:
        raise CmlError(f"{what} {p}: cannot be created in {anc} ({e.strerror or e})") from None
    os.rmdir(probe)


def check_output(out: str | os.PathLike, kind: str, *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = (), what: str = "-o",
                 also: tuple[str, ...] = ()) -> Path:
    """Refuse, before any work, an output folder that cannot or must not be written (rules in
    the module docstring); returns ``Path(out)``. ``inputs`` are the paths the command reads
    (``-`` and None are skipped); ``also`` lists other kinds that may be written into as they are
    (``cml report`` into a run directory); ``what`` names the option in messages."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    p = Path(out)
    if str(out) == "":
        raise CmlError(f"{what}: expected a folder name, got ''")
    st = _lstat(p, what)
    real = _resolve(p, what)
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        cwd = None
    if cwd is not None and _is_within(cwd, real):
        raise CmlError(f"{what} {p}: is the current folder or one above it; name a new folder for the output")
    for inp in inputs:
        if inp is None or str(inp) in ("", "-"):
            continue
        try:
            r_in = Path(inp).resolve()
        except (RuntimeError, OSError, ValueError):
            continue  # the input's own check reports it
        if _is_within(r_in, real):
            how = "is" if r_in == real else "holds"
            raise CmlError(f"{what} {p}: {how} the input {inp}; write the output elsewhere")
    _check_parts(p, what)
    if st is None:
        _check_creatable(p, what)
        return p
    try:
        is_dir = os.path.isdir(p)
    except (OSError, ValueError):
        is_dir = False
    if not is_dir:
        if os.path.islink(p) and not os.path.exists(p):
            raise CmlError(f"{what} {p}: is a broken symbolic link, not a folder")
        raise CmlError(f"{what} {p}: is a file, not a folder; choose another output path")
    try:
        with os.scandir(p) as entries:
            empty = next(entries, None) is None
    except OSError as e:
        raise CmlError(f"{what} {p}: cannot be read ({e.strerror or e})") from None
    if empty:
        return p
    found = folder_kind(p)
    if found is not None and found in also:
        return p
    if not overwrite:
        if also:
            raise CmlError(f"{what} {p}: exists and is none of {', '.join(KINDS[k] for k in also)}; "
                           "name a new folder")
        hint = "--overwrite or --resume" if kind == "run" else "--overwrite"
        raise CmlError(f"{what} {p}: exists and is not empty (pass {hint} to replace {KINDS[kind]})")
    if found != kind:
        now = f"it is {KINDS[found]}" if found else "cml did not write it"
        raise CmlError(f"{what} {p}: --overwrite replaces only {KINDS[kind]}, and {now}; "
                       "choose another output path, or remove it yourself")
    stranger = foreign_entry(p, kind)
    if stranger is not None:
        raise CmlError(f"{what} {p}: holds {stranger}, which cml did not write there; --overwrite "
                       "would delete it: move it away or choose another output path")
    return p
