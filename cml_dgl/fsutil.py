"""Atomic output: write into a temporary sibling, then rename into place."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from cml_dgl.errors import CmlError


def open_binary(path: str | os.PathLike, expected: str = "a file") -> BinaryIO:
    """``open(path, "rb")``, with a CmlError naming the file when it is missing, a directory or
    unreadable (``expected`` says what should have been there)."""
    p = Path(path)
    try:
        return open(p, "rb")
    except FileNotFoundError:
        raise CmlError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise CmlError(f"{p}: is a directory, expected {expected}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CmlError(f"{p}: a symbolic link loop (too many levels of symbolic links)") from None
        raise CmlError(f"{p}: cannot read ({e.strerror or e})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(name: str, what: str) -> str:
    """``.<name>.<what>-``, the name cut so that the temporary name fits any file system."""
    return f".{name[:64]}.{what}-"


@contextlib.contextmanager
def atomic_dir(outdir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``outdir``.

    An existing non-empty ``outdir`` is refused unless ``overwrite`` (whether it may be replaced
    is :func:`cml_dgl.outputs.check_output`'s question, asked by the caller before the work). On
    any exception the temporary directory is removed and ``outdir`` is left untouched.
    """
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise CmlError(f"{out}: is a file, not a folder; choose another output path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CmlError(f"{out}: output directory exists (pass --overwrite to replace it)")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CmlError(f"{parent}: cannot create output parent directory ({e.strerror})") from None
    parent = Path(os.path.realpath(parent))  # fixed now: "a/../b" must not move with a
    target = parent / out.name
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out.name, "tmp"), dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the output is an ordinary directory
    try:
        yield tmp
        if os.path.lexists(target):
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(out.name, "old"), dir=parent))
            os.replace(target, old / "d")
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old / "d", target)
                os.rmdir(old)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes,
                       before_rename: Callable[[], None] | None = None) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory, fsync, rename.

    The file gets the permissions of an ordinary new file (0666 less the umask), not mkstemp's
    0600. ``before_rename`` runs once the temporary file is complete, just before the rename (e.g.
    to rotate the previous version away); temporary files are named ``.<name>.tmp-*``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name, "tmp"), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.tmp-*`` files that an interrupted :func:`atomic_write_bytes` left in
    ``directory``; returns their paths."""
    d = Path(directory)
    stale = [p for p in d.glob(".*.tmp-*") if p.is_file()] if d.is_dir() else []
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
