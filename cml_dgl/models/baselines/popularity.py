"""Popularity: the same ranked list for every user."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from cml_dgl.models.base import Recommender


class Popularity(Recommender):
    """Ranks items by their number of training interactions, the same list for every user.

    :math:`e_u = 1 \\in R^1`, :math:`e_i = c_i = |\\{(u, i, b) \\in \\text{train}\\}|` over every
    behavior ``b``, or the target behavior only with ``target_only`` (``pop-target``). Items without
    training interactions all score 0 and tie. Not trained.
    """

    def __init__(self, item_counts: np.ndarray, n_users: int, target_only: bool = False):
        super().__init__()
        self.target_only = target_only
        counts = np.asarray(item_counts, dtype=np.float32)
        self.register_buffer("item_counts", torch.from_numpy(counts).unsqueeze(1), persistent=False)
        self.register_buffer("user_ones", torch.ones(n_users, 1), persistent=False)

    @staticmethod
    def counts(ds: Any, target_only: bool = False) -> np.ndarray:
        """Training interactions per item (every behavior, or the target's only)."""
        items = ds.edges(ds.n_behaviors - 1)[1] if target_only else ds.train_item.astype(np.int64)
        return np.bincount(items, minlength=ds.n_items)

    @classmethod
    def from_config(cls, ds: Any, cfg: dict[str, Any], device: torch.device,
                    target_only: bool = False) -> "Popularity":
        return cls(cls.counts(ds, target_only), ds.n_users, target_only).to(device)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_ones, self.item_counts
