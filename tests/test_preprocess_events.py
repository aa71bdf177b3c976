"""Dedupe, filters and id remapping (cml_dgl.data.events) and the chunked reader (sources.tabular)."""

import gzip
import zipfile

import numpy as np
import pandas as pd
import pytest

from cml_dgl.data.events import Events, build_interactions, dedupe, remap_ids
from cml_dgl.data.sources import taobao
from cml_dgl.data.sources.tabular import read_events
from cml_dgl.errors import CmlError


@pytest.mark.parametrize("raw", [
    np.array([50, 7, 50, 9, 7, 1000], dtype=np.int64),             # dense lookup path
    np.array([10**15, 3, 10**15, -(10**12), 3], dtype=np.int64),    # wide span: factorize path
    np.array(["b", "a", "b", "c10", "c9"], dtype=object),           # string ids
])
def test_remap_ids_is_contiguous_and_follows_raw_order(raw):
    codes, uniques = remap_ids(raw)
    assert codes.dtype == np.int32
    assert sorted(set(codes.tolist())) == list(range(len(uniques)))
    assert list(uniques) == sorted(set(raw.tolist()))
    assert list(uniques[codes]) == list(raw)


def _reference_dedupe(u, i, b, t):
    df = pd.DataFrame({"b": b, "u": u, "i": i, "t": t})
    return df.groupby(["b", "u", "i"], as_index=False)["t"].min().sort_values(["b", "u", "i"])


@pytest.mark.parametrize("n_users,n_items", [(30, 40), (2**40, 2**30)])  # key path, lexsort path
def test_dedupe_keeps_earliest_time_and_sorts(n_users, n_items):
    rng = np.random.default_rng(1)
    n = 5000
    u = rng.integers(0, 30, n).astype(np.int32)
    i = rng.integers(0, 40, n).astype(np.int32)
    b = rng.integers(0, 3, n).astype(np.int8)
    t = rng.integers(-5, 10**9, n)
    du, di, db, dt = dedupe(u, i, b, t, n_users, n_items, 3)
    ref = _reference_dedupe(u, i, b, t)
    np.testing.assert_array_equal(du, ref["u"].to_numpy())
    np.testing.assert_array_equal(di, ref["i"].to_numpy())
    np.testing.assert_array_equal(db, ref["b"].to_numpy())
    np.testing.assert_array_equal(dt, ref["t"].to_numpy())
    assert du.dtype == np.int32 and db.dtype == np.int8 and dt.dtype == np.int64


def _events(rows, behaviors=("view", "cart", "buy"), divisor=1):
    u, i, b, t = zip(*rows)
    return Events(user=np.array(u), item=np.array(i), behavior=np.array(b, dtype=np.int8),
                  time=np.array(t, dtype=np.int64), behaviors=list(behaviors), time_divisor=divisor)


def test_filters_run_items_first_then_users_and_ids_are_compacted():
    rows = [
        # user 10: buys items 100, 101, 102 (3 purchases) and views 901 (an item seen once)
        (10, 100, 2, 5), (10, 101, 2, 6), (10, 102, 2, 7), (10, 901, 0, 1), (10, 100, 2, 3),
        # user 20: buys 100, 101 and 902 -> after dropping item 902 only 2 purchases are left
        (20, 100, 2, 5), (20, 101, 2, 5), (20, 902, 2, 9),
        # user 30: buys 100, 101, 102, views 103
        (30, 100, 2, 1), (30, 101, 2, 1), (30, 102, 2, 1), (30, 103, 0, 1), (30, 103, 0, 0),
    ]
    inter = build_interactions(_events(rows), min_purchases=3, min_item_interactions=2)
    assert list(inter.user_ids) == [10, 30]
    assert list(inter.item_ids) == [100, 101, 102]  # 901, 902 and 103 have 1 edge each
    assert inter.n_users == 2 and inter.n_items == 3
    key = list(zip(inter.behavior.tolist(), inter.user.tolist(), inter.item.tolist()))
    assert key == sorted(key) and len(set(key)) == len(key)
    # user 10 item 100 bought at 5 and 3 -> earliest 3
    m = (inter.user == 0) & (inter.item == 0)
    assert inter.time[m].tolist() == [3]
    assert inter.stats["rows"] == len(rows)
    assert inter.stats["duplicate_rows"] == 2


def test_without_item_filter_user_with_three_purchases_stays_and_times_are_divided():
    rows = [(1, 5, 2, 1999), (1, 6, 2, 2000), (1, 7, 2, 2001), (2, 5, 2, 10), (2, 5, 1, 10)]
    inter = build_interactions(_events(rows, divisor=1000), min_purchases=3)
    assert list(inter.user_ids) == [1]
    assert sorted(inter.time.tolist()) == [1, 2, 2]


def test_no_user_left_is_a_clear_error():
    rows = [(1, 5, 2, 1), (1, 6, 0, 1)]
    with pytest.raises(CmlError, match=r"log\.csv: no user is left after the filters \(min_purchases=3"):
        build_interactions(_events(rows), min_purchases=3, what="log.csv")


def _taobao_lines(n, seed=0):
    rng = np.random.default_rng(seed)
    beh = np.array(["pv", "fav", "cart", "buy"])[rng.integers(0, 4, n)]
    return [f"{rng.integers(1, 50)},{rng.integers(1, 300)},{rng.integers(1, 9)},{b},{rng.integers(1.5e9, 1.6e9)}"
            for b in beh]


def test_small_blocks_give_the_same_table_and_right_line_numbers(tmp_path):
    lines = _taobao_lines(3000)
    path = tmp_path / "ub.csv"
    path.write_text("\n".join(lines) + "\n")
    whole = read_events(path, taobao.SPEC, quiet=True)
    small = read_events(path, taobao.SPEC, block_bytes=1024, quiet=True)
    for name in ("user", "item", "behavior", "time"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(small, name))
    assert len(whole) == 3000
    ref = pd.read_csv(path, header=None)
    np.testing.assert_array_equal(whole.user, ref[0].to_numpy())
    np.testing.assert_array_equal(whole.behavior, ref[3].map({"pv": 0, "fav": 1, "cart": 2, "buy": 3}))
    lines[2345] = lines[2345].replace(",pv,", ",click,").replace(",buy,", ",click,") \
        .replace(",fav,", ",click,").replace(",cart,", ",click,")
    path.write_text("\n".join(lines))  # no final newline either
    with pytest.raises(CmlError, match=r"ub\.csv: line 2346: unknown behavior_type 'click' "
                                       r"\(expected one of pv, fav, cart, buy\)"):
        read_events(path, taobao.SPEC, block_bytes=1024, quiet=True)


def test_compressed_inputs_read_like_plain_ones(tmp_path):
    text = "\n".join(_taobao_lines(500, seed=3)) + "\n"
    plain = tmp_path / "ub.csv"
    plain.write_text(text)
    with gzip.open(tmp_path / "ub.csv.gz", "wt") as f:
        f.write(text)
    with zipfile.ZipFile(tmp_path / "ub.zip", "w") as zf:
        zf.writestr("UserBehavior.csv", text)
    ref = read_events(plain, taobao.SPEC, quiet=True)
    for name in ("ub.csv.gz", "ub.zip"):
        got = read_events(tmp_path / name, taobao.SPEC, block_bytes=2048, quiet=True)
        np.testing.assert_array_equal(got.item, ref.item)
        np.testing.assert_array_equal(got.time, ref.time)
    (tmp_path / "cut.csv.gz").write_bytes((tmp_path / "ub.csv.gz").read_bytes()[:-40])
    with pytest.raises(CmlError, match=r"cut\.csv\.gz: cannot read"):
        read_events(tmp_path / "cut.csv.gz", taobao.SPEC, quiet=True)
