"""Retailrocket ``events.csv`` (Kaggle retailrocket/ecommerce-dataset).

A header row; fields picked by name: ``timestamp`` (unix milliseconds), ``visitorid``, ``event``
in {view, addtocart, transaction}, ``itemid`` (``transactionid`` is ignored). Behaviors, target
last: view, cart, buy. Times are stored in seconds (milliseconds floor-divided by 1000), the unit
of the published benchmark split.
"""

from __future__ import annotations

import os

from cml_dgl.data.events import Events
from cml_dgl.data.sources.tabular import DEFAULT_BLOCK_BYTES, TableSpec, read_events

BEHAVIORS = ("view", "cart", "buy")
SPEC = TableSpec(
    behaviors=BEHAVIORS,
    behavior_values={"view": 0, "addtocart": 1, "transaction": 2},
    user="visitorid", item="itemid", behavior="event", time="timestamp",
    time_unit="s", time_divisor=1000,
)


def read(path: str | os.PathLike, *, block_bytes: int = DEFAULT_BLOCK_BYTES, quiet: bool = False) -> Events:
    return read_events(path, SPEC, block_bytes=block_bytes, quiet=quiet)
