r"""A realistic synthetic multi-behavior shop: the data behind ``cml demo``, the benchmarks and contract tests.

Generative process
------------------
One ``seed`` feeds one ``numpy.random.default_rng``; every draw below comes from it, fully vectorised.

**Latent world.** :math:`C` item categories (``n_clusters``) have unit centre vectors
:math:`\mu_c \in \mathbb{R}^d` (``n_factors``, random directions). Item :math:`i` belongs to category
:math:`c_i` (category sizes vary, drawn from a Dirichlet) and has factor
:math:`v_i = \mu_{c_i} + \sigma_v \epsilon_i`. User :math:`u` has a main and a side interest
:math:`g_u, h_u` and factor :math:`x_u = \mu_{g_u} + \tfrac12 \mu_{h_u} + \sigma_x \eta_u`.
The affinity is :math:`s_{ui} = x_u^\top v_i`; its standardised value over the sampled views is :math:`z_{ui}`.

**Power laws.** Item popularity is Zipf-like, :math:`p_i \propto r_i^{-a}` (``item_zipf``) for a random
rank :math:`r_i`; user activity likewise, :math:`w_u \propto r_u^{-b}` (``user_zipf``). A user's number of
views (and, in :func:`synthetic_dataset`, of purchases beyond the minimum) is proportional to :math:`w_u`.

**Views.** Each view of user :math:`u` picks an item from

.. math:: P(i \mid u) \propto p_i \exp(\beta s_{ui}) = \operatorname{softmax}_i(\beta s_{ui} + \log p_i)

(``affinity_scale`` :math:`\beta`). It is sampled without ever forming the user x item matrix: the
category part :math:`\beta x_u^\top \mu_c` and the category's popularity mass give an exact proposal
(category, then item by popularity within it), and the item-level rest
:math:`\beta x_u^\top (v_i - \mu_{c_i})` is applied by sampling-importance-resampling: the Gumbel-max
among ``n_candidates`` proposals (exact as the number of candidates grows).

**Funnel.** With :math:`\sigma` the logistic function and :math:`\gamma` = ``funnel_slope``, each view
leads to every intermediate behavior :math:`k` (e.g. favourite, cart) with probability
:math:`\sigma(\operatorname{logit} q_k + \gamma z_{ui})` (so :math:`q_k` is the rate at average
affinity), and to a purchase with probability
:math:`\sigma(\operatorname{logit} q_\text{buy|cart} + \gamma z_{ui})` when it was carted (the last
intermediate behavior) and :math:`\sigma(\operatorname{logit} q_\text{buy|view} + \gamma z_{ui})` otherwise.
So the affinity that draws views also drives carts and purchases: auxiliary behaviors carry signal
about what a user buys. Times follow the funnel inside the window ``[start_time, start_time + days)``:
a view at :math:`t_v` (uniform over the first 85 % of the window), a favourite or cart at
:math:`t_v + d`, a purchase after the cart (or the view), each delay :math:`d \ge 1` s exponential
(mean ``mean_delay``) and capped, so view < cart < buy strictly.

:func:`generate_events` writes this process out as a raw event log (repeated views included), and
:func:`write_raw_log` stores it in the Taobao ``UserBehavior.csv`` layout or a plain CSV, for the
preprocessing pipeline.

**Direct datasets.** :func:`synthetic_dataset` is the fast path for benchmarks: the same world, but
it builds a split :class:`~cml_dgl.data.dataset.Dataset` with requested *unique-edge* counts per
behavior (``share`` of ``n_edges``; default like Tmall: view 75 %, favourite 3.5 %, cart 10 %,
purchase 11.5 %). It draws, per user, a set of distinct viewed items (same softmax; rejected repeats
are redrawn, a few last ones uniformly), picks each user's purchases among them by
weighted sampling without replacement with weight :math:`e^{\gamma z_{ui}}` (every user buys at least
4 items), holds each user's latest purchase out for test and the one before for validation (removing
that (user, item) pair from every behavior), and picks each intermediate behavior's edges among the
remaining views with weight :math:`e^{\gamma z_{ui}} \cdot \kappa^{[\text{bought}]}` (a bought pair is
``kappa`` times likelier to have been carted or favourited). Every auxiliary edge follows a view here.
Each test/validation user gets 99 negatives drawn uniformly from the items they did not buy.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from cml_dgl.data.dataset import N_NEGATIVES, Dataset
from cml_dgl.errors import CmlError
from cml_dgl.fsutil import atomic_write_bytes

TMALL_SHARE = {"pv": 0.75, "fav": 0.035, "cart": 0.10, "buy": 0.115}
TAOBAO_BEHAVIORS = ("pv", "fav", "cart", "buy")
_DEFAULT_AUX_RATES = {"fav": 0.05, "cart": 0.12}
_MIN_PURCHASES = 4  # 2 left in train + 1 validation + 1 test
_CHUNK = 1 << 20


@dataclass
class SynthConfig:
    """Parameters of the synthetic shop (see the module docstring for the model).

    ``behaviors``: funnel order, the view-like behavior first and the target last; ``views_per_user``:
    mean view events per user (:func:`generate_events`); ``n_factors`` :math:`d`; ``n_clusters``
    :math:`C`; ``item_zipf`` :math:`a`, ``user_zipf`` :math:`b`; ``affinity_scale`` :math:`\\beta`;
    ``item_noise`` :math:`\\sigma_v`, ``user_noise`` :math:`\\sigma_x`; ``n_candidates``: proposals per
    view; ``funnel_slope`` :math:`\\gamma`; ``aux_rates`` :math:`q_k` per intermediate behavior (None:
    fav 0.05, cart 0.12, others 0.1), ``buy_after_cart`` / ``buy_after_view``: the purchase
    probabilities, all at average affinity (:math:`z = 0`); ``kappa`` :math:`\\kappa`
    (:func:`synthetic_dataset` only); ``start_time`` (unix seconds), ``days``, ``mean_delay``
    (seconds) place the times; raw user ids start at ``user_id_offset``.
    """

    n_users: int = 2000
    n_items: int = 3000
    behaviors: tuple[str, ...] = TAOBAO_BEHAVIORS
    views_per_user: float = 40.0
    n_factors: int = 8
    n_clusters: int = 12
    item_zipf: float = 0.8
    user_zipf: float = 0.6
    affinity_scale: float = 3.0
    item_noise: float = 0.5
    user_noise: float = 0.4
    n_candidates: int = 4
    funnel_slope: float = 1.5
    aux_rates: tuple[float, ...] | None = None
    buy_after_cart: float = 0.5
    buy_after_view: float = 0.06
    kappa: float = 10.0
    start_time: int = 1511539200  # 2017-11-25 00:00 UTC, the Taobao window
    days: float = 9.0
    mean_delay: float = 1800.0
    user_id_offset: int = 1_000_000
    seed: int = 0

    def validate(self) -> None:
        for name in ("n_users", "n_items", "n_factors", "n_clusters", "n_candidates"):
            if int(getattr(self, name)) < 1:
                raise CmlError(f"SynthConfig.{name} must be >= 1, got {getattr(self, name)}")
        behaviors = tuple(self.behaviors)
        if len(behaviors) < 1 or len(set(behaviors)) != len(behaviors):
            raise CmlError(f"SynthConfig.behaviors must be distinct and non-empty, got {behaviors}")
        for name in ("views_per_user", "affinity_scale", "days", "mean_delay", "kappa"):
            if not float(getattr(self, name)) > 0:
                raise CmlError(f"SynthConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("item_zipf", "user_zipf", "funnel_slope", "item_noise", "user_noise"):
            if not float(getattr(self, name)) >= 0:
                raise CmlError(f"SynthConfig.{name} must be >= 0, got {getattr(self, name)}")
        rates = [self.buy_after_cart, self.buy_after_view, *self.resolved_aux_rates()]
        if not all(0 < r < 1 for r in rates):
            raise CmlError(f"SynthConfig funnel probabilities must lie in (0, 1), got {rates}")

    def resolved_aux_rates(self) -> tuple[float, ...]:
        middle = tuple(self.behaviors)[1:-1]
        if self.aux_rates is None:
            return tuple(_DEFAULT_AUX_RATES.get(b, 0.1) for b in middle)
        if len(self.aux_rates) != len(middle):
            raise CmlError(f"SynthConfig.aux_rates needs one rate per intermediate behavior {middle}, "
                           f"got {tuple(self.aux_rates)}")
        return tuple(float(r) for r in self.aux_rates)


@dataclass
class _World:
    """Latent factors, categories and power laws of one synthetic shop (internal ids)."""

    user_x: np.ndarray  # (U, d) float32
    item_v: np.ndarray  # (I, d) float32
    item_resid: np.ndarray  # (I, d) float32: v_i - mu_{c_i}
    item_cluster: np.ndarray  # (I,) int64
    user_cluster_cdf: np.ndarray  # (U, C) float64: proposal over categories
    items_by_cluster: np.ndarray  # (I,) items sorted by category
    cum_pop: np.ndarray  # (I,) cumulative popularity along items_by_cluster
    cluster_lo: np.ndarray  # (C,) popularity mass before each category
    cluster_mass: np.ndarray  # (C,)
    cluster_first: np.ndarray  # (C,) first index in items_by_cluster
    cluster_last: np.ndarray  # (C,) last index
    guide: np.ndarray  # (B,) guide table: first index with cum_pop > b * total / B
    activity: np.ndarray  # (U,) float64, sums to 1
    beta: float
    n_candidates: int

    @property
    def n_users(self) -> int:
        return len(self.user_x)

    @property
    def n_items(self) -> int:
        return len(self.item_v)


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    ranks = rng.permutation(n) + 1.0
    w = ranks ** (-float(exponent))
    return w / w.sum()


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _build_world(cfg: SynthConfig, rng: np.random.Generator) -> _World:
    U, I, d = int(cfg.n_users), int(cfg.n_items), int(cfg.n_factors)
    C = min(int(cfg.n_clusters), I)
    centres = _unit_rows(rng.standard_normal((C, d)))
    size_p = rng.dirichlet(np.full(C, 2.0))
    item_cluster = np.concatenate([np.arange(C), rng.choice(C, size=I - C, p=size_p)])
    item_cluster = rng.permutation(item_cluster).astype(np.int64)
    resid = cfg.item_noise * rng.standard_normal((I, d)) / np.sqrt(d)
    item_v = centres[item_cluster] + resid
    pop = _zipf_weights(I, cfg.item_zipf, rng)

    main = rng.choice(C, size=U, p=np.bincount(item_cluster, minlength=C) / I)
    side = rng.integers(0, C, size=U)
    user_x = centres[main] + 0.5 * centres[side] + cfg.user_noise * rng.standard_normal((U, d)) / np.sqrt(d)
    activity = _zipf_weights(U, cfg.user_zipf, rng)

    order = np.argsort(item_cluster, kind="stable")
    cum_pop = np.cumsum(pop[order])
    cluster_mass = np.bincount(item_cluster, weights=pop, minlength=C)
    counts = np.bincount(item_cluster, minlength=C)
    cluster_first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cluster_last = cluster_first + counts - 1
    cluster_lo = np.concatenate([[0.0], cum_pop[cluster_last[:-1]]])
    guide = np.searchsorted(cum_pop, np.arange(2 * I) * (cum_pop[-1] / (2 * I)), side="right")

    beta = float(cfg.affinity_scale)
    logits = beta * (user_x @ centres.T) + np.log(cluster_mass)[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    cdf[:, -1] = 1.0
    return _World(
        user_x=user_x.astype(np.float32), item_v=item_v.astype(np.float32),
        item_resid=resid.astype(np.float32), item_cluster=item_cluster, user_cluster_cdf=cdf,
        items_by_cluster=order.astype(np.int64), cum_pop=cum_pop, cluster_lo=cluster_lo,
        cluster_mass=cluster_mass, cluster_first=cluster_first, cluster_last=cluster_last,
        guide=guide.astype(np.int64), activity=activity, beta=beta, n_candidates=int(cfg.n_candidates),
    )


def _affinity(world: _World, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """:math:`s_{ui} = x_u^\\top v_i` for aligned pairs, in chunks (float32)."""
    out = np.empty(len(users), dtype=np.float32)
    for lo in range(0, len(users), _CHUNK):
        sl = slice(lo, lo + _CHUNK)
        out[sl] = np.einsum("ij,ij->i", world.user_x[users[sl]], world.item_v[items[sl]])
    return out


def _inverse_cdf(cum: np.ndarray, guide: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``searchsorted(cum, pos, side="right")`` by a guide table (Chen & Asau): O(1) expected per query."""
    B = len(guide)
    idx = guide[np.minimum((pos * (B / cum[-1])).astype(np.int64), B - 1)]
    last = len(cum) - 1
    active = np.flatnonzero((idx < last) & (cum[np.minimum(idx, last)] <= pos))
    while len(active):
        idx[active] += 1
        j = idx[active]
        active = active[(j < last) & (cum[np.minimum(j, last)] <= pos[active])]
    return idx


def _sample_views(world: _World, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of ``users`` from softmax(beta * s_ui + log p_i), by category proposal + SIR."""
    M, C = world.n_candidates, world.user_cluster_cdf.shape[1]
    U = world.n_users
    flat_cdf = (world.user_cluster_cdf + np.arange(U, dtype=np.float64)[:, None]).ravel()
    out = np.empty(len(users), dtype=np.int64)
    step = max(1, _CHUNK // M)
    for lo in range(0, len(users), step):
        u = np.repeat(users[lo:lo + step].astype(np.int64), M)
        c = np.searchsorted(flat_cdf, u + rng.random(len(u)), side="right") - u * C
        c = np.clip(c, 0, C - 1)
        pos = world.cluster_lo[c] + rng.random(len(u)) * world.cluster_mass[c]
        idx = _inverse_cdf(world.cum_pop, world.guide, pos)
        idx = np.clip(idx, world.cluster_first[c], world.cluster_last[c])
        items = world.items_by_cluster[idx]
        if M > 1:
            score = world.beta * np.einsum("ij,ij->i", world.user_x[u], world.item_resid[items])
            score += rng.gumbel(size=len(u)).astype(np.float32)
            pick = score.reshape(-1, M).argmax(axis=1)
            items = items.reshape(-1, M)[np.arange(len(pick)), pick]
        out[lo:lo + step] = items
    return out


def _allocate(total: int, weights: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """Integer counts ``lo <= n <= hi`` summing to ``total``, proportional to ``weights`` beyond ``lo``."""
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    total = int(min(max(total, lo.sum()), hi.sum()))
    x = lo.astype(np.float64)
    free = hi > lo
    while True:
        rest = total - x.sum()
        if rest <= 0 or not free.any():
            break
        w = np.where(free, weights, 0.0)
        y = x + rest * w / w.sum()
        over = free & (y >= hi)
        if not over.any():
            x = y
            break
        x[over] = hi[over]
        free &= ~over
    n = np.minimum(np.floor(x + 1e-9).astype(np.int64), hi)
    short = total - int(n.sum())
    if short > 0:
        frac = np.where(n < hi, x - n + 1e-12, 0.0)
        cand = np.flatnonzero(frac > 0)
        key = np.log(frac[cand]) + rng.gumbel(size=len(cand))
        n[cand[np.argpartition(-key, short - 1)[:short]]] += 1
    return n


def _delays(n: int, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Funnel delays in whole seconds: 1 + Exp(mean_delay), capped at 3 % of the window."""
    cap = max(1.0, 0.03 * cfg.days * 86400)
    return 1 + np.minimum(rng.exponential(cfg.mean_delay, size=n), cap).astype(np.int64)


def _view_times(n: int, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    span = max(1, int(0.85 * cfg.days * 86400))
    return int(cfg.start_time) + rng.integers(0, span, size=n, dtype=np.int64)


def _raw_ids(cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    users = int(cfg.user_id_offset) + np.arange(cfg.n_users, dtype=np.int64)
    items = 1_000_000 + np.sort(rng.choice(40 * int(cfg.n_items), size=int(cfg.n_items), replace=False))
    return users, items.astype(np.int64)


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def _bernoulli(base: float, slope: float, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.random(len(z)) < 1.0 / (1.0 + np.exp(-(_logit(base) + slope * z)))


def generate_events(cfg: SynthConfig) -> pd.DataFrame:
    """A raw multi-behavior event log from the funnel process (repeated views included).

    Returns a DataFrame sorted by (user_id, timestamp) with columns ``user_id`` (int64),
    ``item_id`` (int64), ``behavior`` (str, one of ``cfg.behaviors``), ``timestamp`` (int64, unix
    seconds) and ``category_id`` (int64, the item's latent category).
    """
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    world = _build_world(cfg, rng)
    user_raw, item_raw = _raw_ids(cfg, rng)
    U = world.n_users
    behaviors = tuple(cfg.behaviors)
    K = len(behaviors)

    n_views = 1 + rng.multinomial(max(int(round(cfg.views_per_user * U)) - U, 0), world.activity)
    vu = np.repeat(np.arange(U, dtype=np.int64), n_views)
    vi = _sample_views(world, vu, rng)
    tv = _view_times(len(vu), cfg, rng)
    s = _affinity(world, vu, vi)
    z = (s - s.mean()) / max(float(s.std()), 1e-6)

    parts_u, parts_i, parts_b, parts_t = [vu], [vi], [np.zeros(len(vu), dtype=np.int64)], [tv]
    if K > 1:
        carted = np.zeros(len(vu), dtype=bool)
        t_cart = tv.copy()
        for k, rate in enumerate(cfg.resolved_aux_rates(), start=1):
            hit = _bernoulli(rate, cfg.funnel_slope, z, rng)
            t = tv + _delays(len(vu), cfg, rng)
            if k == K - 2:
                carted, t_cart = hit, np.where(hit, t, tv)
            parts_u.append(vu[hit]); parts_i.append(vi[hit])
            parts_b.append(np.full(int(hit.sum()), k, dtype=np.int64)); parts_t.append(t[hit])
        buy = np.where(carted, _bernoulli(cfg.buy_after_cart, cfg.funnel_slope, z, rng),
                       _bernoulli(cfg.buy_after_view, cfg.funnel_slope, z, rng))
        t_buy = t_cart + _delays(len(vu), cfg, rng)
        parts_u.append(vu[buy]); parts_i.append(vi[buy])
        parts_b.append(np.full(int(buy.sum()), K - 1, dtype=np.int64)); parts_t.append(t_buy[buy])

    u = np.concatenate(parts_u); i = np.concatenate(parts_i)
    b = np.concatenate(parts_b); t = np.concatenate(parts_t)
    order = np.lexsort((b, t, u))
    u, i, b, t = u[order], i[order], b[order], t[order]
    return pd.DataFrame({
        "user_id": user_raw[u],
        "item_id": item_raw[i],
        "behavior": np.asarray(behaviors, dtype=object)[b],
        "timestamp": t,
        "category_id": 100 + world.item_cluster[i],
    })


def write_raw_log(events: pd.DataFrame, path: str | os.PathLike,
                  fmt: Literal["taobao", "csv"] = "taobao") -> None:
    """Write an event table atomically as a raw log.

    ``taobao``: no header, ``user_id,item_id,category_id,behavior_type,timestamp`` (behaviors must be
    pv/fav/cart/buy; needs a ``category_id`` column). ``csv``: header ``user,item,behavior,timestamp``.
    """
    path = Path(path)
    need = ["user_id", "item_id", "behavior", "timestamp"]
    if fmt == "taobao":
        need.append("category_id")
    missing = [c for c in need if c not in events.columns]
    if missing:
        raise CmlError(f"write_raw_log({path}): events lack column(s) {missing}")
    if fmt == "taobao":
        bad = sorted(set(events["behavior"].unique()) - set(TAOBAO_BEHAVIORS))
        if bad:
            raise CmlError(f"write_raw_log({path}): the taobao format takes behaviors "
                           f"{list(TAOBAO_BEHAVIORS)}, got {bad}")
        table = events[["user_id", "item_id", "category_id", "behavior", "timestamp"]]
        text = table.to_csv(header=False, index=False, lineterminator="\n")
    elif fmt == "csv":
        table = events[need].rename(columns={"user_id": "user", "item_id": "item"})
        text = table.to_csv(header=True, index=False, lineterminator="\n")
    else:
        raise CmlError(f"write_raw_log({path}): unknown format {fmt!r} (expected 'taobao' or 'csv')")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text.encode())
    except OSError as e:
        raise CmlError(f"{path}: cannot write ({e.strerror})") from None


def _resolve_share(behaviors: Sequence[str], share: Mapping[str, float] | Sequence[float] | None) -> np.ndarray:
    K = len(behaviors)
    if share is None:
        if tuple(behaviors) == TAOBAO_BEHAVIORS:
            s = np.array([TMALL_SHARE[b] for b in behaviors])
        elif K == 1:
            s = np.ones(1)
        else:
            middle = (1 - 0.75 - 0.115) / max(K - 2, 1)
            s = np.array([0.75] + [middle] * (K - 2) + [0.115])
            if K == 2:
                s[0] = 1 - 0.115
    elif isinstance(share, Mapping):
        unknown = set(share) - set(behaviors)
        if unknown or len(share) != K:
            raise CmlError(f"share must give one value per behavior {list(behaviors)}, got {dict(share)}")
        s = np.array([float(share[b]) for b in behaviors])
    else:
        s = np.asarray(share, dtype=np.float64)
        if s.shape != (K,):
            raise CmlError(f"share must give one value per behavior {list(behaviors)}, got {list(s)}")
    if not np.all(np.isfinite(s)) or (s < 0).any() or s.sum() <= 0 or s[-1] <= 0 or s[0] <= 0:
        raise CmlError(f"share must be non-negative with positive first and target entries, got {list(s)}")
    return s / s.sum()


def _distinct_views(world: _World, counts: np.ndarray, rng: np.random.Generator,
                    sir_rounds: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``counts[u]`` distinct items per user: softmax draws, repeats redrawn; last stragglers uniform.

    Returns (users, items) sorted by user then item.
    """
    I = world.n_items
    keys = np.empty(0, dtype=np.int64)
    deficit = counts.astype(np.int64).copy()
    for rnd in range(200):
        if not deficit.any():
            return keys // I, keys % I
        want = np.repeat(np.arange(len(deficit), dtype=np.int64), deficit + (deficit + 3) // 4)
        if rnd < sir_rounds:
            items = _sample_views(world, want, rng)
        else:
            items = rng.integers(0, I, size=len(want), dtype=np.int64)
        new = np.unique(want * I + items)
        new = new[~np.isin(new, keys, assume_unique=True)] if len(keys) else new
        nu = new // I
        # keep at most deficit[u] of the new keys per user, in random order
        perm = rng.permutation(len(new))
        new, nu = new[perm], nu[perm]
        order = np.argsort(nu, kind="stable")
        new, nu = new[order], nu[order]
        first = np.searchsorted(nu, nu, side="left")
        rank = np.arange(len(nu)) - first
        keep = rank < deficit[nu]
        new = new[keep]
        deficit -= np.bincount(new // I, minlength=len(deficit))
        keys = np.union1d(keys, new)
    raise CmlError("synthetic_dataset: could not draw enough distinct views (too few items per user)")


def _topk_per_group(group: np.ndarray, key: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Mask of the ``k[g]`` largest ``key`` within each group (integer ``group``, no order needed)."""
    # one float sort: group + a strictly decreasing map of key into (0, 1)
    order = np.argsort(group + (0.5 - np.arctan(key.astype(np.float64)) / np.pi), kind="stable")
    g = group[order]
    rank = np.arange(len(g)) - np.searchsorted(g, g, side="left")
    mask = np.zeros(len(group), dtype=bool)
    mask[order[rank < k[g]]] = True
    return mask


def _weighted_choice(log_w: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` entries drawn without replacement with weight ``exp(log_w)`` (Gumbel top-n)."""
    n = int(min(max(n, 0), len(log_w)))
    if n == 0:
        return np.empty(0, dtype=np.int64)
    key = log_w + rng.gumbel(size=len(log_w))
    if n == len(log_w):
        return np.arange(n)
    return np.sort(np.argpartition(-key, n - 1)[:n])


def _sample_negatives(users: np.ndarray, forbidden: np.ndarray, n_items: int, n_neg: int,
                      rng: np.random.Generator) -> np.ndarray:
    """``n_neg`` distinct items per row, uniform over items whose key ``u * n_items + i`` is not forbidden.

    ``users`` must be increasing and ``forbidden`` sorted and unique. Works on blocks of rows: draws
    in bulk, redraws the rejected or repeated entries of the rows that have any, shuffles each row.
    """
    out = np.empty((len(users), n_neg), dtype=np.int32)
    step = max(1, _CHUNK // n_neg)
    for lo in range(0, len(users), step):
        out[lo:lo + step] = _negatives_block(users[lo:lo + step], forbidden, n_items, n_neg, rng)
    return out


def _negatives_block(users: np.ndarray, forbidden: np.ndarray, n_items: int, n_neg: int,
                     rng: np.random.Generator) -> np.ndarray:
    neg = np.sort(rng.integers(0, n_items, size=(len(users), n_neg), dtype=np.int64), axis=1)
    rows = np.arange(len(users))
    for _ in range(10_000):
        sub = neg[rows]
        keys = users[rows].astype(np.int64)[:, None] * n_items + sub
        bad = np.zeros(sub.shape, dtype=bool)
        if len(forbidden):
            pos = np.minimum(np.searchsorted(forbidden, keys.ravel()), len(forbidden) - 1)
            bad = (forbidden[pos] == keys.ravel()).reshape(sub.shape)
        bad[:, 1:] |= sub[:, 1:] == sub[:, :-1]
        hit = bad.any(axis=1)
        if not hit.any():
            return rng.permuted(neg, axis=1)
        rows, sub, bad = rows[hit], sub[hit], bad[hit]
        sub[bad] = rng.integers(0, n_items, size=int(bad.sum()), dtype=np.int64)
        neg[rows] = np.sort(sub, axis=1)
    raise CmlError("synthetic_dataset: could not draw distinct negatives (too few items)")


def synthetic_dataset(n_users: int, n_items: int, n_edges: int,
                      behaviors: Sequence[str] = TAOBAO_BEHAVIORS, *,
                      share: Mapping[str, float] | Sequence[float] | None = None,
                      seed: int = 0, config: SynthConfig | None = None) -> Dataset:
    """A split in-memory :class:`Dataset` with about ``n_edges`` unique training edges.

    ``share`` (per behavior, target last) splits ``n_edges`` across behaviors; the default follows
    Tmall. Every user keeps at least 2 training purchases plus one validation and one test purchase
    (raising the purchase count above its share where needed); the held-out pairs appear in no
    training behavior. ``config`` overrides the latent-model parameters (its sizes, behaviors and seed
    are replaced by the arguments). See the module docstring for the process.
    """
    behaviors = tuple(behaviors)
    base = config if config is not None else SynthConfig()
    cfg = SynthConfig(**{**asdict(base), "n_users": int(n_users), "n_items": int(n_items),
                         "behaviors": behaviors, "seed": int(seed), "aux_rates": None})
    cfg.validate()
    U, I, K = int(n_users), int(n_items), len(behaviors)
    if I < 2 * (N_NEGATIVES + 1):
        raise CmlError(f"synthetic_dataset: n_items must be >= {2 * (N_NEGATIVES + 1)} "
                       f"(99 negatives per user), got {I}")
    if int(n_edges) < 1:
        raise CmlError(f"synthetic_dataset: n_edges must be >= 1, got {n_edges}")
    s = _resolve_share(behaviors, share)
    target = np.round(s * int(n_edges)).astype(np.int64)
    rng = np.random.default_rng(cfg.seed)
    world = _build_world(cfg, rng)
    user_raw, item_raw = _raw_ids(cfg, rng)

    # per-user purchase and view counts (views include purchases: every purchase follows a view)
    cap = I // 2
    n_buy = _allocate(int(target[-1]) + 2 * U, world.activity, np.full(U, _MIN_PURCHASES), np.full(U, cap), rng)
    n_view = n_buy if K == 1 else n_buy + _allocate(
        max(int(target[0]) - int(target[-1]), 0), world.activity, np.zeros(U, np.int64), cap - n_buy, rng)
    vu, vi = _distinct_views(world, n_view, rng)
    vu, vi = vu.astype(np.int32), vi.astype(np.int32)
    s_ui = _affinity(world, vu, vi)
    z = (s_ui - s_ui.mean()) / max(float(s_ui.std()), 1e-6)
    gamma = float(cfg.funnel_slope)

    # purchases: weighted sampling without replacement within each user's views
    bought = _topk_per_group(vu, gamma * z + rng.gumbel(size=len(vu)), n_buy)
    t_view = _view_times(len(vu), cfg, rng)
    t_mid = t_view + _delays(len(vu), cfg, rng)
    t_buy = t_mid + _delays(len(vu), cfg, rng)

    # hold out the latest purchase (test) and the one before (validation)
    b_idx = np.flatnonzero(bought)
    order = np.lexsort((-t_buy[b_idx], vu[b_idx]))
    bu = vu[b_idx][order]
    rank = np.arange(len(bu)) - np.searchsorted(bu, bu, side="left")
    test_idx = b_idx[order[rank == 0]]
    valid_idx = b_idx[order[rank == 1]]
    held = np.zeros(len(vu), dtype=bool)
    held[test_idx] = True
    held[valid_idx] = True

    eu, ei, eb, et = [], [], [], []
    train = ~held
    if K > 1:
        eu.append(vu[train]); ei.append(vi[train]); et.append(t_view[train])
        eb.append(np.zeros(int(train.sum()), dtype=np.int8))
        pool = np.flatnonzero(train)
        for k in range(1, K - 1):
            log_w = gamma * z[pool] + np.log(cfg.kappa) * bought[pool]
            pick = pool[_weighted_choice(log_w, int(target[k]), rng)]
            eu.append(vu[pick]); ei.append(vi[pick]); et.append(t_mid[pick])
            eb.append(np.full(len(pick), k, dtype=np.int8))
    tb = bought & train
    eu.append(vu[tb]); ei.append(vi[tb]); et.append(t_buy[tb])
    eb.append(np.full(int(tb.sum()), K - 1, dtype=np.int8))
    # each part is sorted by (user, item) and the parts come in behavior order
    u = np.concatenate(eu); i = np.concatenate(ei); b = np.concatenate(eb); t = np.concatenate(et)

    # 99 negatives per user, uniform over items not bought in train and not held out
    users = np.arange(U, dtype=np.int64)
    forbidden = vu[bought].astype(np.int64) * I + vi[bought]  # sorted: (vu, vi) is
    valid = np.stack([vu[valid_idx], vi[valid_idx]], 1)[np.argsort(vu[valid_idx])]
    test = np.stack([vu[test_idx], vi[test_idx]], 1)[np.argsort(vu[test_idx])]
    valid_neg = _sample_negatives(users, forbidden, I, N_NEGATIVES, rng)
    test_neg = _sample_negatives(users, forbidden, I, N_NEGATIVES, rng)

    return Dataset(
        behaviors=list(behaviors), n_users=U, n_items=I,
        train_user=u.astype(np.int32), train_item=i.astype(np.int32),
        train_behavior=b.astype(np.int8), train_time=t.astype(np.int64),
        valid=valid.astype(np.int32), test=test.astype(np.int32),
        valid_negatives=valid_neg.astype(np.int32), test_negatives=test_neg.astype(np.int32),
        user_ids=user_raw, item_ids=item_raw, meta_users=None, source="synthetic",
        options={"generator": "cml_dgl.data.synth.synthetic_dataset", "n_edges": int(n_edges),
                 "share": {bh: float(x) for bh, x in zip(behaviors, s)},
                 "latent": {k: v for k, v in asdict(cfg).items()
                            if k not in ("n_users", "n_items", "behaviors", "seed", "aux_rates")}},
        seed=int(seed),
    )
