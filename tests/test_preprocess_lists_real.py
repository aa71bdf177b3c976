"""Real data: the Tmall split of MB-CGCN/CRGCN as adjacency lists, and the held-out auxiliary policy
on the CML splits and the raw Retailrocket sample (../shared/data).

Expected figures are read from the files here with plain Python / pandas, or are the ones that
../shared/data/README.md documents.
"""

import numpy as np
import pandas as pd
import pytest

from cml_dgl.data.dataset import load_dataset
from conftest import run_cli_ok

pytestmark = pytest.mark.shared_data


def _read_lists(path):
    pairs = set()
    with open(path) as f:
        for line in f:
            u, *items = (int(x) for x in line.split())
            pairs.update((u, i) for i in items)
    return pairs


def _edges(ds, name):
    return set(zip(*(a.tolist() for a in ds.edges(name))))


def test_tmall_mbcgcn_imports_the_published_split(shared_data, tmp_path):
    folder = shared_data / "tmall-mbcgcn"
    run_cli_ok("preprocess", "lists", folder, "-o", tmp_path / "whole", "-q", "--no-valid")
    ds = load_dataset(tmp_path / "whole")
    assert (ds.n_users, ds.n_items) == (15449, 11953)
    assert ds.behaviors == ["view", "cart", "buy"]
    assert ds.train_counts() == {"view": 858505, "cart": 180027, "buy": 92180}
    train = {b: _read_lists(folder / b / "train.txt") for b in ds.behaviors}
    for b in ds.behaviors:
        assert _edges(ds, b) == train[b], b
    with open(folder / "buy" / "test.txt") as f:
        test = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    assert len(test) == 15449
    assert ds.test.tolist() == [list(p) for p in sorted(test)]
    m = ds.options["stats"]["test_pairs_in_auxiliary"]
    in_aux = sum(p in train["view"] or p in train["cart"] for p in test)
    assert (m["pairs"], m["of"], m["test_split"]) == (in_aux, 15449, "kept")
    assert m["by_behavior"] == {b: sum(p in train[b] for p in test) for b in ("view", "cart")}
    assert round(100 * m["fraction"], 1) == 83.2  # the README's figure (79.7% viewed, 19.6% carted)

    run_cli_ok("preprocess", "lists", folder, "-o", tmp_path / "carved", "-q")
    dv = load_dataset(tmp_path / "carved")
    assert dv.options["stats"]["held_out_auxiliary"] == "keep"
    assert dv.valid[:, 0].tolist() == list(range(15449))
    held = set(map(tuple, dv.valid.tolist()))
    assert held <= train["buy"]
    assert dv.train_counts() == {"view": 858505, "cart": 180027, "buy": 92180 - 15449}
    kept = sum(p in train["view"] or p in train["cart"] for p in held) / len(held)
    assert kept > 0.5  # validation pairs stay in the auxiliary behaviors, as the test pairs do
    np.testing.assert_array_equal(dv.test, ds.test)


@pytest.mark.parametrize("name", ["retailrocket", "ijcai15"])
def test_cml_splits_measure_removed_and_keep_their_validation_split(shared_data, tmp_path, name):
    folder = shared_data / name
    run_cli_ok("preprocess", "cml-pickle", folder, "-o", tmp_path / "auto", "-q")
    run_cli_ok("preprocess", "cml-pickle", folder, "-o", tmp_path / "drop", "-q",
               "--held-out-auxiliary", "drop")
    run_cli_ok("preprocess", "cml-pickle", folder, "-o", tmp_path / "keep", "-q",
               "--held-out-auxiliary", "keep")
    auto, drop, keep = (load_dataset(tmp_path / n) for n in ("auto", "drop", "keep"))
    m = auto.options["stats"]["test_pairs_in_auxiliary"]
    assert (m["pairs"], m["test_split"]) == (0, "removed") and m["of"] == len(auto.test)
    assert m["train_purchases_fraction"] > 0.8  # training purchases are mostly viewed: removal, not chance
    assert auto.options["stats"]["held_out_auxiliary"] == "drop"
    for k in ("train_user", "train_item", "train_behavior", "train_time", "valid", "test",
              "valid_negatives", "test_negatives"):
        np.testing.assert_array_equal(getattr(auto, k), getattr(drop, k), err_msg=k)
    np.testing.assert_array_equal(keep.valid, auto.valid)
    aux = keep.behaviors[:-1]
    assert sum(keep.train_counts()[b] for b in aux) > sum(auto.train_counts()[b] for b in aux)


def test_raw_retailrocket_before_keeps_the_auxiliary_events_earlier_than_the_purchase(shared_data, tmp_path):
    src = shared_data / "raw" / "retailrocket_events_reconstructed.csv"
    run_cli_ok("preprocess", "retailrocket", src, "-o", tmp_path / "b", "-q",
               "--held-out-auxiliary", "before")
    run_cli_ok("preprocess", "retailrocket", src, "-o", tmp_path / "d", "-q")
    ds, default = load_dataset(tmp_path / "b"), load_dataset(tmp_path / "d")
    df = pd.read_csv(src)
    df = pd.DataFrame({"user": df["visitorid"], "item": df["itemid"], "time": df["timestamp"] // 1000,
                       "behavior": df["event"].map({"view": "view", "addtocart": "cart",
                                                    "transaction": "buy"})})
    edges = df.groupby(["user", "item", "behavior"], as_index=False)["time"].min()
    buys = edges[edges["behavior"] == "buy"]
    n_buys = buys.groupby("user")["item"].nunique()
    edges = edges[edges["user"].isin(n_buys[n_buys >= 2].index)]
    buys = edges[edges["behavior"] == "buy"].sort_values(["user", "time", "item"])
    test = buys.groupby("user").tail(1)
    valid = buys.drop(test.index).groupby("user").tail(1)
    held = pd.concat([test, valid])[["user", "item", "time"]].rename(columns={"time": "t_buy"})
    train = edges.merge(held, on=["user", "item"], how="left")
    on_pair = train["t_buy"].notna()
    gone = on_pair & ((train["behavior"] == "buy") | (train["time"] >= train["t_buy"]))
    train = train[~gone]
    assert ds.train_counts() == {b: int((train["behavior"] == b).sum()) for b in ("view", "cart", "buy")}
    raw = lambda a: sorted((ds.user_ids[u].item(), ds.item_ids[i].item()) for u, i in a.tolist())  # noqa: E731
    assert raw(ds.test) == sorted(zip(test["user"], test["item"]))
    assert raw(ds.valid) == sorted(zip(valid["user"], valid["item"]))
    np.testing.assert_array_equal(ds.test, default.test)
    assert ds.train_counts()["buy"] == default.train_counts()["buy"]
    assert ds.train_counts()["view"] > default.train_counts()["view"]  # views before the purchase stay
