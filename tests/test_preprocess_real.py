"""Real data: the published Retailrocket split and the raw samples in ../shared/data.

The expected figures of the raw samples come from a separate, plain pandas implementation of the
documented rules (docs/data-format.md), not from cml_dgl's code.
"""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cml_dgl_cli.main import cli
from cml_dgl.data import safe_pickle
from cml_dgl.data.dataset import load_dataset

pytestmark = pytest.mark.shared_data


def run_ok(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def _unpickle(path):
    return safe_pickle.restricted_load(path)  # pickles run code when loaded: never plain pickle.load


def test_published_retailrocket_split_is_kept_exactly(shared_data, tmp_path):
    folder = shared_data / "retailrocket"
    run_ok("preprocess", "cml-pickle", folder, "-o", tmp_path / "rr", "--no-valid", "-q")
    ds = load_dataset(tmp_path / "rr")
    assert (ds.n_users, ds.n_items) == (2174, 30113)
    assert ds.behaviors == ["view", "cart", "buy"]
    assert ds.train_counts() == {"view": 75374, "cart": 12456, "buy": 9551}
    tst = _unpickle(folder / "tst_int")
    assert ds.test.tolist() == [[u, t] for u, t in enumerate(tst) if t is not None]
    assert len(ds.test) == 2174 and ds.valid.shape == (0, 2) and ds.valid_negatives.shape == (0, 99)
    np.testing.assert_array_equal(ds.meta_users,
                                  _unpickle(folder / "meta_multi_single_beh_user_index_shuffle"))
    for name in ds.behaviors:
        m = _unpickle(folder / f"trn_{name}").tocoo()
        u, i = ds.edges(name)
        assert set(zip(u.tolist(), i.tolist())) == set(zip(m.row.tolist(), m.col.tolist()))
    buys = set(zip(*(a.tolist() for a in ds.edges("buy"))))
    for (u, t), row in zip(ds.test.tolist()[:300], ds.test_negatives.tolist()[:300]):
        assert t not in row and not any((u, j) in buys for j in row)

    run_ok("preprocess", "cml-pickle", folder, "-o", tmp_path / "rv", "-q")
    dv = load_dataset(tmp_path / "rv")
    assert dv.test.tolist() == ds.test.tolist()
    assert len(dv.valid) == 2174  # every test user has at least one training purchase
    assert dv.train_counts()["buy"] == 9551 - 2174


def _expected(df: pd.DataFrame, behaviors, min_purchases: int) -> dict:
    """Documented rules in plain pandas: dedupe earliest, purchase filter, leave-one-out by time."""
    target = behaviors[-1]
    edges = df.groupby(["user", "item", "behavior"], as_index=False)["time"].min()
    buys = edges[edges["behavior"] == target]
    n_buys = buys.groupby("user")["item"].nunique()
    users = n_buys[n_buys >= min_purchases].index
    edges = edges[edges["user"].isin(users)]
    buys = edges[edges["behavior"] == target].sort_values(["user", "time", "item"])
    test = buys.groupby("user").tail(1)
    rest = buys.drop(test.index)
    valid = rest.groupby("user").tail(1)
    held = pd.concat([test, valid])[["user", "item"]].assign(held=True)
    train = edges.merge(held, on=["user", "item"], how="left")
    train = train[train["held"].isna()]
    return {
        "n_users": edges["user"].nunique(),
        "n_items": edges["item"].nunique(),
        "train": {b: int((train["behavior"] == b).sum()) for b in behaviors},
        "test": sorted(zip(test["user"].tolist(), test["item"].tolist())),
        "valid": sorted(zip(valid["user"].tolist(), valid["item"].tolist())),
    }


def _check(ds, exp):
    assert ds.n_users == exp["n_users"]
    assert ds.n_items == exp["n_items"]
    assert ds.train_counts() == exp["train"]
    raw = lambda pairs: sorted((ds.user_ids[u].item(), ds.item_ids[i].item()) for u, i in pairs.tolist())  # noqa: E731
    assert raw(ds.test) == exp["test"]
    assert raw(ds.valid) == exp["valid"]


def test_taobao_sample(shared_data, tmp_path):
    src = shared_data / "raw" / "taobao_userbehavior_sample.csv"
    run_ok("preprocess", "taobao", src, "-o", tmp_path / "tb", "-q")
    ds = load_dataset(tmp_path / "tb")
    df = pd.read_csv(src, header=None, names=["user", "item", "category", "behavior", "time"])
    assert df["user"].nunique() == 43 and len(df) == 4321
    exp = _expected(df, ["pv", "fav", "cart", "buy"], 3)
    assert 0 < exp["n_users"] < 43
    _check(ds, exp)


def test_ijcai15_sample(shared_data, tmp_path):
    src = shared_data / "raw" / "ijcai15_user_log_sample_4cols.csv"
    run_ok("preprocess", "ijcai15", src, "-o", tmp_path / "ij", "-q")
    ds = load_dataset(tmp_path / "ij")
    df = pd.read_csv(src, index_col=0).rename(columns={"user_id": "user", "item_id": "item",
                                                       "time_stamp": "time"})
    df["behavior"] = df["action_type"].map({0: "click", 1: "cart", 2: "buy", 3: "fav"})
    assert df["user"].nunique() == 100
    _check(ds, _expected(df, ["click", "fav", "cart", "buy"], 3))


def test_retailrocket_events_sample(shared_data, tmp_path):
    src = shared_data / "raw" / "retailrocket_events_reconstructed.csv"
    run_ok("preprocess", "retailrocket", src, "-o", tmp_path / "re", "-q")
    ds = load_dataset(tmp_path / "re")
    df = pd.read_csv(src)
    df = pd.DataFrame({"user": df["visitorid"], "item": df["itemid"], "time": df["timestamp"] // 1000,
                       "behavior": df["event"].map({"view": "view", "addtocart": "cart",
                                                    "transaction": "buy"})})
    assert len(df) == 97381
    _check(ds, _expected(df, ["view", "cart", "buy"], 2))
    # the sample was rebuilt from the benchmark's matrices: same ids, same times in seconds
    m = _unpickle(shared_data / "retailrocket" / "trn_cart").tocsr()
    u, i = ds.edges("cart")
    times = ds.train_time[ds.train_behavior == 1]
    bench = np.asarray(m[ds.user_ids[u], ds.item_ids[i]]).ravel()
    np.testing.assert_array_equal(times, bench)
