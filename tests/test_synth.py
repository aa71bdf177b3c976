"""The synthetic shop: determinism, requested sizes, a clean split, raw logs, and learnable signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cml_dgl.data.dataset import load_dataset, write_dataset
from cml_dgl.data.synth import (
    SynthConfig,
    _build_world,
    _inverse_cdf,
    _sample_views,
    generate_events,
    synthetic_dataset,
    write_raw_log,
)
from cml_dgl.errors import CmlError

N_USERS, N_ITEMS, N_EDGES = 500, 700, 25_000


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(N_USERS, N_ITEMS, N_EDGES, seed=3)


@pytest.fixture(scope="module")
def events():
    return generate_events(SynthConfig(n_users=300, n_items=500, views_per_user=30, seed=5))


def _keys(ds, which=None):
    u, i, b = (ds.train_user.astype(np.int64), ds.train_item.astype(np.int64),
               ds.train_behavior.astype(np.int64))
    if which is not None:
        m = b == which
        u, i, b = u[m], i[m], b[m]
    return u, i, b


def _arrays(d):
    return [d.train_user, d.train_item, d.train_behavior, d.train_time, d.valid, d.test,
            d.valid_negatives, d.test_negatives, d.user_ids, d.item_ids]


def test_dataset_is_deterministic_in_the_seed(ds):
    again = synthetic_dataset(N_USERS, N_ITEMS, N_EDGES, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(ds), _arrays(again)))
    other = synthetic_dataset(N_USERS, N_ITEMS, N_EDGES, seed=4)
    assert not np.array_equal(ds.test, other.test)
    assert len(ds.train_user) != len(other.train_user) or not np.array_equal(ds.train_item, other.train_item)


def test_events_are_deterministic_in_the_seed(events):
    cfg = SynthConfig(n_users=300, n_items=500, views_per_user=30, seed=5)
    pd.testing.assert_frame_equal(events, generate_events(cfg))
    other = generate_events(SynthConfig(n_users=300, n_items=500, views_per_user=30, seed=6))
    assert not events.equals(other)


def test_sizes_and_shares(ds):
    assert ds.behaviors == ["pv", "fav", "cart", "buy"] and ds.target == "buy"
    assert (ds.n_users, ds.n_items) == (N_USERS, N_ITEMS)
    assert ds.meta_users is None
    counts = ds.train_counts()
    assert abs(sum(counts.values()) - N_EDGES) <= 0.02 * N_EDGES
    for name, share in {"pv": 0.75, "fav": 0.035, "cart": 0.10, "buy": 0.115}.items():
        assert abs(counts[name] - share * N_EDGES) <= 0.03 * share * N_EDGES + 1, (name, counts)
    ds.validate()


def test_custom_behaviors_and_share_mapping():
    d = synthetic_dataset(300, 400, 12_000, ("view", "cart", "buy"), share={"view": 0.8, "cart": 0.1, "buy": 0.1},
                          seed=1)
    assert d.behaviors == ["view", "cart", "buy"] and d.target == "buy"
    counts = d.train_counts()
    assert counts["view"] == pytest.approx(9600, rel=0.03) and counts["cart"] == pytest.approx(1200, rel=0.03)
    single = synthetic_dataset(250, 300, 2_000, ("buy",), seed=1)
    assert single.behaviors == ["buy"] and (np.bincount(single.train_user, minlength=250) >= 2).all()


def test_purchase_floor_overrides_a_small_share():
    d = synthetic_dataset(300, 400, 5_000, share=[0.9, 0.02, 0.07, 0.01], seed=2)
    buys = np.bincount(d.edges("buy")[0], minlength=300)
    assert buys.min() >= 2  # 2 per user in train although 1 % of 5,000 edges is 50


def test_no_duplicate_edges_and_sorted(ds):
    u, i, b = _keys(ds)
    key = (b * N_USERS + u) * N_ITEMS + i
    assert len(np.unique(key)) == len(key)
    assert np.all(np.diff(key) > 0), "edges should come sorted by (behavior, user, item)"


def test_split_is_clean(ds):
    users = np.arange(N_USERS)
    assert np.array_equal(ds.test[:, 0], users) and np.array_equal(ds.valid[:, 0], users)
    assert np.all(ds.test[:, 1] != ds.valid[:, 1])
    u, i, _ = _keys(ds)
    train_pairs = np.unique(u * N_ITEMS + i)
    for split in (ds.test, ds.valid):
        assert not np.isin(split[:, 0].astype(np.int64) * N_ITEMS + split[:, 1], train_pairs).any()
    buys = np.bincount(ds.edges("buy")[0], minlength=N_USERS)
    assert buys.min() >= 2


def test_negatives_exclude_purchases_and_positives(ds):
    bu, bi = ds.edges("buy")
    bought = set((bu * N_ITEMS + bi).tolist())
    for split, neg in ((ds.test, ds.test_negatives), (ds.valid, ds.valid_negatives)):
        assert neg.shape == (N_USERS, 99)
        srt = np.sort(neg, axis=1)
        assert np.all(srt[:, 1:] != srt[:, :-1]), "negatives repeat within a row"
        keys = split[:, :1].astype(np.int64) * N_ITEMS + neg
        assert not np.isin(keys, np.fromiter(bought, dtype=np.int64)).any()
        assert not (neg == ds.test[:, 1:2]).any() and not (neg == ds.valid[:, 1:2]).any()
    # uniform over allowed items: every item shows up, none dominates
    freq = np.bincount(ds.test_negatives.ravel(), minlength=N_ITEMS)
    assert freq.min() > 0 and freq.max() < 3 * freq.mean()


def test_funnel_times(ds):
    t = {}
    for k, name in enumerate(ds.behaviors):
        u, i = ds.edges(k)
        t[name] = pd.Series(ds.train_time[ds.train_behavior == k], index=u * N_ITEMS + i)
    start, end = 1511539200, 1511539200 + 9 * 86400
    assert ds.train_time.min() >= start and ds.train_time.max() < end
    for before, after in (("pv", "cart"), ("cart", "buy"), ("pv", "buy"), ("pv", "fav")):
        common = t[before].index.intersection(t[after].index)
        assert len(common) > 0
        assert np.all(t[before][common].to_numpy() < t[after][common].to_numpy()), (before, after)


def test_dataset_round_trips_through_disk(ds, tmp_path):
    back = load_dataset(write_dataset(ds, tmp_path / "synth"))
    assert back.train_counts() == ds.train_counts()
    assert np.array_equal(back.test, ds.test) and np.array_equal(back.item_ids, ds.item_ids)


def _hr10(ds, scores):
    u = ds.test[:, 0]
    pos = scores[u, ds.test[:, 1]]
    neg = scores[u[:, None], ds.test_negatives]
    rank = (neg > pos[:, None]).sum(1) + 0.5 * (neg == pos[:, None]).sum(1)
    return float((rank < 10).mean())


def test_auxiliary_behaviors_carry_purchase_signal(ds):
    """Item-kNN on all behaviors beats popularity, which beats random, on the held-out purchases."""
    X = sp.csr_matrix((np.ones(len(ds.train_user)), (ds.train_user, ds.train_item)),
                      shape=(N_USERS, N_ITEMS))
    X.data[:] = 1.0
    Xn = X.multiply(1 / (np.sqrt(np.asarray(X.sum(0)).ravel()) + 1e-9)).tocsr()
    sim = (Xn.T @ Xn).toarray()
    np.fill_diagonal(sim, 0)
    knn = _hr10(ds, np.asarray(X @ sim))
    pop = _hr10(ds, np.tile(np.asarray(ds.csr("buy").sum(0)).ravel(), (N_USERS, 1)))
    assert pop > 0.2  # random ranking gives 0.10
    assert knn > pop + 0.1, (knn, pop)


def test_carts_and_favourites_lean_towards_purchases(ds):
    def pairs(name):
        u, i = ds.edges(name)
        return u * N_ITEMS + i

    bought = pairs("buy")
    base = np.isin(pairs("pv"), bought).mean()
    for name in ("fav", "cart"):
        assert np.isin(pairs(name), pairs("pv")).all(), "every auxiliary edge follows a view"
        assert np.isin(pairs(name), bought).mean() > 2.5 * base, name


def test_events_signal_views_predict_purchases(events):
    pv = events[events.behavior == "pv"]
    buy = events[events.behavior == "buy"]
    n_pairs = events.user_id.nunique() * events.item_id.nunique()
    viewed = set(zip(pv.user_id, pv.item_id))
    bought = set(zip(buy.user_id, buy.item_id))
    p_buy = len(bought) / n_pairs
    p_buy_given_view = len(bought & viewed) / len(viewed)
    assert p_buy_given_view / p_buy > 5
    # every purchase follows a view of the same item, every cart too
    first = events.groupby(["user_id", "item_id", "behavior"]).timestamp.min().unstack()
    for later in ("cart", "buy", "fav"):
        rows = first[later].notna()
        assert (first.loc[rows, "pv"] < first.loc[rows, later]).all(), later


def test_events_columns_and_ids(events):
    assert list(events.columns) == ["user_id", "item_id", "behavior", "timestamp", "category_id"]
    assert set(events.behavior) == {"pv", "fav", "cart", "buy"}
    assert events.user_id.min() >= 1_000_000 and events.item_id.min() >= 1_000_000
    assert events.groupby("item_id").category_id.nunique().max() == 1
    assert events.duplicated(["user_id", "item_id", "behavior"]).any(), "raw logs repeat views"
    counts = events.behavior.value_counts()
    assert counts["pv"] > counts["cart"] > counts["fav"] and counts["buy"] > 0


@pytest.mark.parametrize("fmt", ["taobao", "csv"])
def test_raw_log_parses_back(events, tmp_path, fmt):
    path = tmp_path / "sub" / f"log.{fmt}.csv"
    write_raw_log(events, path, fmt)
    if fmt == "taobao":
        back = pd.read_csv(path, header=None,
                           names=["user_id", "item_id", "category_id", "behavior", "timestamp"])
        expect = events[["user_id", "item_id", "category_id", "behavior", "timestamp"]]
    else:
        back = pd.read_csv(path)
        assert list(back.columns) == ["user", "item", "behavior", "timestamp"]
        expect = events[["user_id", "item_id", "behavior", "timestamp"]].set_axis(list(back.columns), axis=1)
    pd.testing.assert_frame_equal(back, expect.reset_index(drop=True), check_dtype=False)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_raw_log_rejects_bad_input(events, tmp_path):
    renamed = events.assign(behavior=events.behavior.replace({"pv": "view"}))
    with pytest.raises(CmlError, match="taobao format takes behaviors"):
        write_raw_log(renamed, tmp_path / "a.csv", "taobao")
    with pytest.raises(CmlError, match="unknown format"):
        write_raw_log(events, tmp_path / "b.csv", "parquet")
    with pytest.raises(CmlError, match="category_id"):
        write_raw_log(events.drop(columns="category_id"), tmp_path / "c.csv", "taobao")
    assert not list(tmp_path.iterdir())


def test_bad_arguments():
    with pytest.raises(CmlError, match="n_items"):
        synthetic_dataset(10, 150, 1000)
    with pytest.raises(CmlError, match="share"):
        synthetic_dataset(10, 300, 1000, share=[0.5, 0.5])
    with pytest.raises(CmlError, match="aux_rates"):
        generate_events(SynthConfig(n_users=5, n_items=300, aux_rates=(0.1,)))
    with pytest.raises(CmlError, match="buy_after_cart|funnel"):
        generate_events(SynthConfig(n_users=5, n_items=300, buy_after_cart=1.5))


def test_view_sampler_matches_the_softmax():
    """With many candidates the resampled views follow softmax(beta * s_ui + log p_i)."""
    world = _build_world(SynthConfig(n_users=3, n_items=300), np.random.default_rng(0))
    world.n_candidates = 64
    items = _sample_views(world, np.full(100_000, 1, dtype=np.int64), np.random.default_rng(1))
    emp = np.bincount(items, minlength=300) / len(items)
    pop = np.empty(300)
    pop[world.items_by_cluster] = np.diff(world.cum_pop, prepend=0.0)
    logit = np.log(pop) + world.beta * (world.item_v @ world.user_x[1])
    q = np.exp(logit - logit.max())
    q /= q.sum()
    assert 0.5 * np.abs(emp - q).sum() < 0.04


def test_guide_table_equals_searchsorted():
    world = _build_world(SynthConfig(n_users=3, n_items=5000), np.random.default_rng(2))
    pos = np.random.default_rng(3).random(50_000) * world.cum_pop[-1]
    pos[:3] = [0.0, world.cum_pop[0], world.cum_pop[10]]
    want = np.minimum(np.searchsorted(world.cum_pop, pos, side="right"), 4999)
    assert np.array_equal(_inverse_cdf(world.cum_pop, world.guide, pos), want)
