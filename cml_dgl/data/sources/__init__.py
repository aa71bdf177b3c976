"""Raw-log readers, one module per format, and the table of sources ``cml preprocess`` accepts.

Every raw reader returns the same :class:`cml_dgl.data.events.Events` table (raw ids, int8
behavior index with the target last, integer time); ``cml-pickle`` and ``lists``
(:mod:`cml_dgl.data.sources.adjacency_lists`) are already split and return a
:class:`cml_dgl.data.sources.cml_pickle.PublishedSplit`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from cml_dgl.data.events import Events
from cml_dgl.data.sources import csv_source, ijcai15, retailrocket, taobao
from cml_dgl.data.sources.tabular import DEFAULT_BLOCK_BYTES
from cml_dgl.errors import CmlError


@dataclass(frozen=True)
class Source:
    """A preprocessable source: its behaviors (target last) and default purchase filter.

    ``min_purchases`` is None for an already split source, where filters do not apply.
    """

    name: str
    behaviors: tuple[str, ...] | None
    min_purchases: int | None
    summary: str


SOURCES: dict[str, Source] = {
    "taobao": Source("taobao", taobao.BEHAVIORS, 3, "Taobao UserBehavior.csv (no header)"),
    "ijcai15": Source("ijcai15", ijcai15.BEHAVIORS, 3, "IJCAI-15 user_log_format1.csv (header)"),
    "retailrocket": Source("retailrocket", retailrocket.BEHAVIORS, 2, "Retailrocket events.csv"),
    "cml-pickle": Source("cml-pickle", None, None, "a published CML split folder (trn_* + tst_int, or SSLRec's train_mat_*.pkl + test_mat.pkl)"),
    "csv": Source("csv", None, 2, "a user,item,behavior,timestamp CSV with a header; --behaviors"),
    "lists": Source("lists", None, None, "a published split as user-item adjacency lists (MB-CGCN's <behavior>/train.txt folders, or GHCF's train.txt + <behavior>.txt + test.txt)"),
}
ALIASES: dict[str, str] = {"tmall": "taobao"}
NAMES: tuple[str, ...] = tuple(SOURCES) + tuple(ALIASES)


def resolve(name: str) -> Source:
    """The source called ``name`` (aliases allowed, case-insensitive)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SOURCES:
        raise CmlError(f"unknown source {name!r}; expected one of {', '.join(NAMES)}")
    return SOURCES[key]


def read_raw(source: Source, path: str | os.PathLike, behaviors: Sequence[str] | None = None, *,
             block_bytes: int = DEFAULT_BLOCK_BYTES, quiet: bool = False) -> Events:
    """Read a raw log of ``source`` into an Events table."""
    if source.name == "csv":
        return csv_source.read(path, csv_source.check_behaviors(behaviors, "source csv"),
                               block_bytes=block_bytes, quiet=quiet)
    if behaviors:
        raise CmlError(f"--behaviors applies to the csv, cml-pickle and lists sources only; {source.name} "
                       f"has the fixed behaviors {','.join(source.behaviors or ())}")
    reader = {"taobao": taobao.read, "ijcai15": ijcai15.read, "retailrocket": retailrocket.read}
    if source.name not in reader:
        raise CmlError(f"source {source.name} is not a raw log")
    return reader[source.name](path, block_bytes=block_bytes, quiet=quiet)
