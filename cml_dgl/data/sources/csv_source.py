"""A shop's own log: a CSV with a header naming ``user,item,behavior,timestamp`` (any order; extra
columns ignored). ``behaviors`` gives the behavior values in order, target (purchase) last; any
other value is an error. Ids may be any text (stored as int64 when every id is a canonical
integer, else as str); timestamps must be integers (any unit, larger = later).
"""

from __future__ import annotations

import os
from typing import Sequence

from cml_dgl.data.events import Events
from cml_dgl.data.sources.tabular import DEFAULT_BLOCK_BYTES, TableSpec, behavior_map, read_events
from cml_dgl.errors import CmlError


def check_behaviors(names: Sequence[str] | None, what: str) -> tuple[str, ...]:
    """Validate a behavior list (distinct, non-empty names, target last)."""
    if not names:
        raise CmlError(f"{what} needs --behaviors a,b,...,target (the behavior values in order, target last)")
    names = tuple(n.strip() for n in names)
    if any(not n for n in names) or len(set(names)) != len(names):
        raise CmlError(f"--behaviors: expected distinct, non-empty names, got {','.join(names)!r}")
    return names


def spec(behaviors: Sequence[str]) -> TableSpec:
    names = check_behaviors(behaviors, "source csv")
    return TableSpec(behaviors=names, behavior_values=behavior_map(names), user="user", item="item",
                     behavior="behavior", time="timestamp", string_ids=True, time_unit="as given")


def read(path: str | os.PathLike, behaviors: Sequence[str], *, block_bytes: int = DEFAULT_BLOCK_BYTES,
         quiet: bool = False) -> Events:
    return read_events(path, spec(behaviors), block_bytes=block_bytes, quiet=quiet)
