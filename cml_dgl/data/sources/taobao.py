"""Taobao ``UserBehavior.csv`` (Tianchi dataset 649; the source of the "Tmall" benchmark).

No header; five fields ``user_id,item_id,category_id,behavior_type,timestamp``; behavior_type in
{pv, fav, cart, buy}; timestamp in unix seconds. Behaviors, target last: pv, fav, cart, buy.
"""

from __future__ import annotations

import os

from cml_dgl.data.events import Events
from cml_dgl.data.sources.tabular import DEFAULT_BLOCK_BYTES, TableSpec, behavior_map, read_events

BEHAVIORS = ("pv", "fav", "cart", "buy")
SPEC = TableSpec(
    behaviors=BEHAVIORS,
    behavior_values=behavior_map(BEHAVIORS),
    columns=("user_id", "item_id", "category_id", "behavior_type", "timestamp"),
    user="user_id", item="item_id", behavior="behavior_type", time="timestamp",
)


def read(path: str | os.PathLike, *, block_bytes: int = DEFAULT_BLOCK_BYTES, quiet: bool = False) -> Events:
    return read_events(path, SPEC, block_bytes=block_bytes, quiet=quiet)
