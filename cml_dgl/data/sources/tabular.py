"""The one chunked reader of delimited event logs; every raw source describes its file as a TableSpec.

The file is read in blocks of about ``block_bytes`` cut at line ends; each block is parsed by
pandas' C engine with int64 ids and times and the behavior as a category, then validated with
vector operations and reduced to compact numpy columns (int32 ids where they fit, int8 behavior).
Only when a block fails does a slow line-by-line scan of that block run, to name the first bad line:

    <file>: line <n>: <what was expected>, got <what was found>

Line numbers are physical lines of the (decompressed) file, counting the header. Blank lines are
skipped. A field that pandas reads as a whole number (``12``, ``12.0``) is an integer. ``.gz``,
``.bz2``, ``.xz`` and single-member ``.zip`` inputs are decompressed on the fly.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import lzma
import math
import os
import stat
import sys
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from cml_dgl.data.events import Events, smallest_int
from cml_dgl.errors import CmlError
from cml_dgl.fsutil import open_binary

DEFAULT_BLOCK_BYTES = 64 << 20
MAX_LINE_BYTES = 1 << 20
"""A longer line is refused: an event is a few dozen bytes, and one huge line would be parsed in
one piece (a file with old Mac line ends, a binary file, a JSON dump)."""
_CANONICAL_INT = r"-?(?:0|[1-9][0-9]{0,17})"
_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile)


@dataclass(frozen=True)
class TableSpec:
    """How a raw log lays out its events.

    ``columns`` names every field of a headerless file in order; ``None`` means the first line is a
    header and fields are found by name there (extra columns are ignored). ``user``, ``item``,
    ``behavior`` and ``time`` name the fields to read. ``behavior_values`` maps each raw behavior
    value (as text) to its index in ``behaviors`` (target last). ``string_ids`` admits any text as
    an id; the ids become int64 when every id in the file is a canonical integer, else str.
    """

    behaviors: tuple[str, ...]
    behavior_values: Mapping[str, int]
    user: str
    item: str
    behavior: str
    time: str
    columns: tuple[str, ...] | None = None
    string_ids: bool = False
    time_unit: str = "s"
    time_divisor: int = 1


@dataclass(frozen=True)
class _Layout:
    n_fields: int
    names: tuple[str, ...]
    pos: dict[str, int]  # role -> field position
    first_data_line: int


# ---------------------------------------------------------------------------------------- input


_MAGIC = {b"\x1f\x8b": ".gz", b"BZh": ".bz2", b"\xfd7zXZ\x00": ".xz", b"PK\x03\x04": ".zip"}


def _compressed(raw: BinaryIO, path: Path, suffix: str) -> BinaryIO:
    if suffix == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if suffix == ".bz2":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if suffix == ".xz":
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if suffix == ".zip":
        zf = zipfile.ZipFile(raw)
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) != 1:
            raise CmlError(f"{path}: expected a zip archive holding one file, found {len(members)}")
        return zf.open(members[0])  # type: ignore[return-value]
    return raw


class _Counted(io.RawIOBase):
    """A non-seekable stream (stdin, a pipe) that counts the bytes read from it, for progress."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self.raw.read(len(buffer))
        buffer[:len(data)] = data
        self.count += len(data)
        return len(data)


@contextlib.contextmanager
def _open_raw(p: Path) -> Iterator[tuple[BinaryIO, Callable[[], int], int | None]]:
    """The file, or stdin for ``-``: (stream, bytes consumed, size where known)."""
    if str(p) == "-":
        stdin = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
        if stdin is None:
            raise CmlError("-: no standard input to read")
        if stdin.isatty():
            raise CmlError("-: reads the events from standard input, which is a terminal; pipe or "
                           "redirect a file into it (cml preprocess csv - ... < events.csv)")
        counted = _Counted(stdin)
        yield io.BufferedReader(counted), lambda: counted.count, None  # type: ignore[misc]
        return
    with open_binary(p) as raw:
        st = os.fstat(raw.fileno())
        if stat.S_ISREG(st.st_mode):
            yield raw, raw.tell, st.st_size
            return
        counted = _Counted(raw)
        yield io.BufferedReader(counted), lambda: counted.count, None  # type: ignore[misc]


@contextlib.contextmanager
def open_input(path: str | os.PathLike) -> Iterator[tuple[BinaryIO, Callable[[], int], int | None]]:
    """Open a (possibly compressed) input: yields (stream, bytes-of-file-consumed, file size, None
    for stdin (``-``) and pipes). A ``.zip`` must be a regular file (the format needs seeking)."""
    p = Path(path)
    with _open_raw(p) as (raw, consumed, size):
        suffix = p.suffix.lower()
        if size is None:  # a pipe has no useful name: its first bytes tell a compressed stream
            head = raw.peek(6)[:6]  # type: ignore[attr-defined]
            suffix = next((s for magic, s in _MAGIC.items() if head.startswith(magic)), suffix)
            if suffix == ".zip":
                raise CmlError(f"{p}: a .zip archive cannot be read from a pipe or stdin (it needs a "
                               "seekable file); pass the file itself, or unzip it into the pipe")
        empty = size == 0 if size is not None else not raw.peek(1)  # type: ignore[attr-defined]
        if empty:
            raise CmlError(f"{p}: empty {'file' if size is not None else 'input'}, expected event rows")
        try:
            stream = _compressed(raw, p, suffix)
        except _READ_ERRORS as e:
            raise CmlError(f"{p}: cannot read the {p.suffix} archive ({e})") from None
        yield stream, consumed, size


def _read(stream: BinaryIO, n: int, path: Path) -> bytes:
    try:
        return stream.read(n)
    except _READ_ERRORS as e:
        raise CmlError(f"{path}: cannot read ({e}); is the file truncated or corrupt?") from None


def _long_line(path: Path, line_no: int) -> CmlError:
    return CmlError(f"{path}: line {line_no}: longer than {MAX_LINE_BYTES >> 20} MiB without a line end; "
                    "expected one event per line, ending in \\n or \\r\\n")


def _blocks(stream: BinaryIO, block_bytes: int, path: Path, first: bytes, line_no: int
            ) -> Iterator[bytes]:
    """Consecutive pieces of the stream, each ending at a line end (the last one may not).

    ``line_no`` is the number of the first line of ``first``. A line that spans reads and grows
    past :data:`MAX_LINE_BYTES` is refused as soon as it does (its pieces are kept in a list, so
    it costs linear time); a line within one read is bounded by ``block_bytes``."""
    pending: list[bytes] = [first] if first else []
    tail = len(first) - 1 - first.rfind(b"\n")  # bytes of the unfinished last line
    ends = first.count(b"\n")  # line ends held in ``pending``
    while True:
        chunk = _read(stream, block_bytes, path)
        if not chunk:
            if pending:
                yield b"".join(pending)
            return
        cut = chunk.rfind(b"\n")
        if cut < 0:
            pending.append(chunk)
            tail += len(chunk)
            if tail > MAX_LINE_BYTES:
                raise _long_line(path, line_no + ends)
            continue
        if tail + chunk.find(b"\n") > MAX_LINE_BYTES:
            raise _long_line(path, line_no + ends)
        block = b"".join(pending + [chunk[:cut + 1]]) if pending else chunk[:cut + 1]
        line_no += ends + chunk.count(b"\n", 0, cut + 1)
        rest = chunk[cut + 1:]
        pending, tail, ends = ([rest] if rest else []), len(rest), 0
        yield block


# ---------------------------------------------------------------------------------------- layout


def _split_fields(line: bytes) -> list[str]:
    text = line.rstrip(b"\r").decode("utf-8")
    return next(csv.reader([text]))


def _layout(spec: TableSpec, stream: BinaryIO, path: Path) -> tuple[_Layout, bytes]:
    """Resolve field positions; returns the layout and the bytes read past the header."""
    roles = {"user": spec.user, "item": spec.item, "behavior": spec.behavior, "time": spec.time}
    if spec.columns is not None:
        pos = {role: spec.columns.index(name) for role, name in roles.items()}
        return _Layout(len(spec.columns), spec.columns, pos, 1), b""
    pieces: list[bytes] = []
    size = 0
    while True:
        chunk = _read(stream, 1 << 16, path)
        pieces.append(chunk)
        if not chunk or b"\n" in chunk:
            break
        size += len(chunk)
        if size > MAX_LINE_BYTES:
            raise _long_line(path, 1)
    line, _, rest = b"".join(pieces).partition(b"\n")
    line = line.removeprefix(b"\xef\xbb\xbf")
    if not line.strip():
        raise CmlError(f"{path}: line 1: expected a header naming the columns "
                       f"{', '.join(roles.values())}, got an empty line")
    try:
        names = tuple(n.strip() for n in _split_fields(line))
    except UnicodeDecodeError:
        raise CmlError(f"{path}: line 1: expected a UTF-8 text header") from None
    except csv.Error as e:  # e.g. a lone \r: old Mac line ends make the whole file one line
        raise CmlError(f"{path}: line 1: expected a header line ending in \\n or \\r\\n, "
                       f"got malformed CSV ({e})") from None
    twice = sorted({n for n in names if n and names.count(n) > 1})
    if twice:
        raise CmlError(f"{path}: line 1: column name(s) {', '.join(map(repr, twice))[:200]} appear more "
                       "than once in the header; expected each column named once")
    missing = [n for n in roles.values() if n not in names]
    if missing:
        got = ", ".join(names)
        raise CmlError(f"{path}: line 1: header lacks column(s) {', '.join(missing)} "
                       f"(expected columns {', '.join(roles.values())}; got "
                       f"{got if len(got) <= 200 else got[:200] + '...'})")
    pos = {role: names.index(name) for role, name in roles.items()}
    return _Layout(len(names), names, pos, 2), rest


# ---------------------------------------------------------------------------------------- blocks


def _int_problem(text: str) -> str | None:
    """None for a whole number that fits int64 (``12``, ``12.0``); else ``"not an integer"`` or
    ``"too large"``."""
    try:
        value: float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            return "not an integer"
        if not (math.isfinite(value) and value.is_integer()):
            return "not an integer"
    return None if -(2**63) <= value < 2**63 else "too large"


def _diagnose(block: bytes, line_no: int, spec: TableSpec, lay: _Layout) -> str | None:
    """The first line of ``block`` that breaks the rules, as ``line N: expected ..., got ...``."""
    known = ", ".join(spec.behavior_values)
    need = max(lay.pos.values()) + 1
    for k, line in enumerate(block.split(b"\n")):
        n = line_no + k
        if not line.rstrip(b"\r"):
            continue
        try:
            fields = _split_fields(line)
        except UnicodeDecodeError:
            return f"line {n}: expected UTF-8 text, got undecodable bytes"
        except csv.Error as e:
            return f"line {n}: malformed CSV ({e})"
        if len(fields) > lay.n_fields or len(fields) < need:
            return (f"line {n}: expected {lay.n_fields} comma-separated fields "
                    f"({','.join(lay.names)}), got {len(fields)} (truncated or malformed line?)")
        for role in ("user", "item", "time"):
            value = fields[lay.pos[role]]
            name = lay.names[lay.pos[role]]
            if role != "time" and spec.string_ids:
                if value == "":
                    return f"line {n}: expected a non-empty {name}, got ''"
            elif (problem := _int_problem(value)) is not None:
                shown = repr(value) if len(value) <= 80 else repr(value[:80]) + "..."
                if problem == "too large":
                    return (f"line {n}: {name} {shown} is an integer too large for int64 "
                            "(expected -2^63 .. 2^63-1)")
                return f"line {n}: expected an integer {name}, got {shown}"
        value = fields[lay.pos["behavior"]]
        if value not in spec.behavior_values:
            return (f"line {n}: unknown {lay.names[lay.pos['behavior']]} {value!r} "
                    f"(expected one of {known})")
    return None


class _BadBlock(Exception):
    pass


def _parse_block(block: bytes, spec: TableSpec, lay: _Layout, lookup: dict[str, int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse one block into (user, item, behavior int8, time); raise _BadBlock if anything is off."""
    id_type = object if spec.string_ids else "int64"
    p = lay.pos
    dtype = {p["user"]: id_type, p["item"]: id_type, p["behavior"]: "category", p["time"]: "int64"}
    try:
        with warnings.catch_warnings():  # a bad value warns while casting, then raises: the raise counts
            warnings.simplefilter("ignore", RuntimeWarning)
            df = pd.read_csv(io.BytesIO(block), header=None, names=list(range(lay.n_fields)),
                             dtype=dtype, engine="c", keep_default_na=False, na_values=[""],
                             skip_blank_lines=True)
    except (ValueError, OverflowError, TypeError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise _BadBlock(str(e)) from None
    if df.shape[1] != lay.n_fields or not isinstance(df.index, pd.RangeIndex):
        raise _BadBlock("wrong number of fields")
    beh = df[p["behavior"]]
    codes = beh.cat.codes.to_numpy()
    cat_map = np.array([lookup.get(str(c), -1) for c in beh.cat.categories] + [-1], dtype=np.int16)
    behavior = cat_map[codes]  # code -1 (missing) picks the trailing -1
    if behavior.size and behavior.min() < 0:
        raise _BadBlock("unknown behavior")
    user, item = df[p["user"]].to_numpy(), df[p["item"]].to_numpy()
    if spec.string_ids:
        if pd.isna(df[p["user"]]).any() or pd.isna(df[p["item"]]).any():
            raise _BadBlock("missing id")
    else:
        user, item = smallest_int(user), smallest_int(item)
    return user, item, behavior.astype(np.int8), smallest_int(df[p["time"]].to_numpy())


def _concat(parts: list[np.ndarray], empty: np.dtype) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=empty)
    out = np.concatenate(parts)
    parts.clear()
    return out


def _ids_from_text(ids: np.ndarray) -> np.ndarray:
    """int64 when every id is a canonical decimal integer (no sign/zero padding), else str."""
    s = pd.Series(ids, dtype=object)
    if len(s) and bool(s.str.fullmatch(_CANONICAL_INT).all()):
        return s.astype(np.int64).to_numpy()
    return ids.astype(str)


def read_events(path: str | os.PathLike, spec: TableSpec, *, block_bytes: int = DEFAULT_BLOCK_BYTES,
                quiet: bool = False) -> Events:
    """Read a whole log into an :class:`Events` table, validating every row (rules above)."""
    p = Path(path)
    lookup = {str(k): int(v) for k, v in spec.behavior_values.items()}
    cols: dict[str, list[np.ndarray]] = {"user": [], "item": [], "behavior": [], "time": []}
    with open_input(p) as (stream, consumed, size):
        lay, rest = _layout(spec, stream, p)
        line_no = lay.first_data_line
        with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                  desc=f"reading {p.name}", disable=quiet, leave=False, mininterval=0.5) as bar:
            for block in _blocks(stream, block_bytes, p, rest, line_no):
                try:
                    parsed = _parse_block(block, spec, lay, lookup)
                except _BadBlock as e:
                    msg = _diagnose(block, line_no, spec, lay)
                    last = line_no + block.count(b"\n") - int(block.endswith(b"\n"))
                    raise CmlError(f"{p}: {msg}" if msg else
                                   f"{p}: lines {line_no}-{last}: cannot be parsed ({e})") from None
                for name, arr in zip(cols, parsed):
                    cols[name].append(arr)
                line_no += block.count(b"\n")
                bar.update(consumed() - bar.n)
    if not cols["behavior"] or sum(len(a) for a in cols["behavior"]) == 0:
        raise CmlError(f"{p}: no event rows (expected lines of {','.join(lay.names)})")
    user = _concat(cols["user"], np.dtype(np.int64))
    item = _concat(cols["item"], np.dtype(np.int64))
    if spec.string_ids:
        user, item = _ids_from_text(user), _ids_from_text(item)
    return Events(user=user, item=item, behavior=_concat(cols["behavior"], np.dtype(np.int8)),
                  time=_concat(cols["time"], np.dtype(np.int64)), behaviors=list(spec.behaviors),
                  time_unit=spec.time_unit, time_divisor=spec.time_divisor)


def behavior_map(names: Sequence[str]) -> dict[str, int]:
    """Identity mapping of behavior names to their indices."""
    return {name: k for k, name in enumerate(names)}
