"""IJCAI-15 repeat-buyers ``user_log_format1.csv`` (Tianchi).

A header row; the fields ``user_id,item_id,time_stamp,action_type`` are picked by name, so the full
7-column file (``user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type``) and reduced
copies (e.g. with a leading unnamed index column) both read. ``time_stamp`` is month*100+day
(511..1112, no year), kept as is. action_type 0 click, 1 add-to-cart, 2 purchase, 3 favourite;
behaviors, target last: click, fav, cart, buy.
"""

from __future__ import annotations

import os

from cml_dgl.data.events import Events
from cml_dgl.data.sources.tabular import DEFAULT_BLOCK_BYTES, TableSpec, read_events

BEHAVIORS = ("click", "fav", "cart", "buy")
SPEC = TableSpec(
    behaviors=BEHAVIORS,
    behavior_values={"0": 0, "3": 1, "1": 2, "2": 3},
    user="user_id", item="item_id", behavior="action_type", time="time_stamp",
    time_unit="MMDD",
)


def read(path: str | os.PathLike, *, block_bytes: int = DEFAULT_BLOCK_BYTES, quiet: bool = False) -> Events:
    return read_events(path, SPEC, block_bytes=block_bytes, quiet=quiet)
