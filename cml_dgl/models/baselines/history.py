"""History: the user's own auxiliary-behavior items first, then purchase popularity."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor

from cml_dgl.errors import CmlError
from cml_dgl.graph.build import prepare_relations
from cml_dgl.models.base import ScoredRecommender

if TYPE_CHECKING:
    import scipy.sparse as sp

EXACT_FLOAT32 = 1 << 24
"""Integers up to this are exact in float32: every score of the rule is such an integer."""


def history_behaviors(ds: Any, value: str) -> list[int]:
    """Indices of the auxiliary behaviors named by config ``history_behaviors``: ``all``, or
    comma-separated names (``cart``, ``view,cart``); in the dataset's order."""
    aux = list(ds.behaviors[:-1])
    if value.strip() == "all":
        return list(range(len(aux)))
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if n not in aux]
    if not names or bad:
        shown = ", ".join(map(repr, bad)) or repr(value)
        raise CmlError(f"config history_behaviors: {shown} is not a list of auxiliary behaviors of this dataset; "
                       f"expected 'all' or names among {', '.join(aux) or '(none)'}")
    return sorted({aux.index(n) for n in names})


def popularity_rank(ds: Any) -> np.ndarray:
    """Dense rank (0 = least bought) of each item's number of training purchases: equal counts,
    equal ranks."""
    counts = np.bincount(ds.edges(ds.n_behaviors - 1)[1], minlength=ds.n_items)
    return np.unique(counts, return_inverse=True)[1].reshape(-1).astype(np.int64)


class History(ScoredRecommender):
    """The user's own history, strongest behavior first, then purchase popularity.

    With H the selected auxiliary behaviors (config ``history_behaviors``, default all of them)
    in the dataset's order, weakest first, and :math:`E_k` the training edges of behavior k:

    .. math::
        tier(u, i) &= \\max\\{\\, h : (u, i) \\in E_{H_h} \\,\\} \\in \\{1..|H|\\}
                      \\text{ (0 when u has no such edge with i)} \\\\
        count(u, i) &= |\\{\\, k \\in H : (u, i) \\in E_k \\,\\}| \\\\
        s(u, i) &= \\big( tier(u, i) (|H| + 1) + count(u, i) \\big) (P + 1) + pop(i)

    where pop(i) in 0..P is the dense rank of the item's training purchases. So items of the
    user's strongest selected behavior (the one closest to the target, e.g. cart before view)
    come first, then by how many selected behaviors the user touched them in (edges are
    deduplicated per behavior, so this counts behaviors), then by purchase popularity; items the
    user never touched follow by popularity alone. Scores are integers, exact in float32, so
    equal keys tie exactly. ``history_behaviors: cart`` on a view/cart/buy dataset is "own carted
    items first, then purchase popularity". Not trained; built from the dataset.
    """

    def __init__(self, codes: sp.csr_matrix, pop: np.ndarray):
        super().__init__()
        self.codes = codes.tocsr().astype(np.float32)
        self.pop = torch.from_numpy(np.asarray(pop, dtype=np.float32))
        self.n_users, self.n_items = self.codes.shape

    @classmethod
    def fit(cls, ds: Any, behaviors: Sequence[int]) -> "History":
        """The rule's integer codes for the user's items of ``behaviors`` (auxiliary indices)."""
        import scipy.sparse as sp

        pop = popularity_rank(ds)
        top = int(pop.max()) if len(pop) else 0
        n_h = len(behaviors)
        if (n_h * (n_h + 1) + n_h) * (top + 1) + top >= EXACT_FLOAT32:
            raise CmlError(f"history: {top + 1:,} distinct purchase counts x {n_h} behaviors do not fit "
                           "exact float32 scores; select fewer history_behaviors")
        keys, tiers = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        if behaviors:  # deduplicated (user, item) keys per behavior, tier h + 1
            rel = prepare_relations(ds.n_users, ds.n_items, [ds.edges(k) for k in behaviors])
            keys += [rel.users[h] * ds.n_items + rel.items[h] for h in range(n_h)]
            tiers += [np.full(len(rel.users[h]), h + 1, dtype=np.int64) for h in range(n_h)]
        uniq, inverse = np.unique(np.concatenate(keys), return_inverse=True)
        inverse = inverse.reshape(-1)
        tier = np.zeros(len(uniq), dtype=np.int64)
        np.maximum.at(tier, inverse, np.concatenate(tiers))
        count = np.bincount(inverse, minlength=len(uniq))
        code = (tier * (n_h + 1) + count) * (top + 1)
        codes = sp.csr_matrix((code.astype(np.float32), (uniq // ds.n_items, uniq % ds.n_items)),
                              shape=(ds.n_users, ds.n_items))
        return cls(codes, pop)

    @classmethod
    def from_config(cls, ds: Any, cfg: dict[str, Any], device: torch.device) -> "History":
        return cls.fit(ds, history_behaviors(ds, cfg["history_behaviors"]))

    def score_users(self, users: Tensor) -> Tensor:
        rows = torch.from_numpy(self.codes[users.cpu().numpy()].toarray())
        return rows + self.pop
