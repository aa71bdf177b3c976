"""`--held-out-auxiliary`: what happens to a held-out pair's auxiliary edges, for every kind of source.

Raw logs default to ``drop`` (as before the option existed); published splits default to what their
test split did, measured on the test pairs and recorded in meta.json.
"""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from cml_dgl.data.dataset import load_dataset
from conftest import run_cli, run_cli_ok

# user u1 buys A (t=10), C (t=20) and B (t=30): B is the test item, C the validation item
EVENTS = """user,item,behavior,timestamp
u1,A,buy,10
u1,B,buy,30
u1,C,buy,20
u1,B,view,25
u1,B,cart,40
u1,C,view,20
u1,C,cart,5
u1,D,view,1
u2,E,buy,1
u2,F,buy,2
u2,A,view,3
"""
ALWAYS = {("u1", "A", "buy"), ("u1", "D", "view"), ("u2", "A", "view")}


def _edges(ds):
    names = ds.behaviors
    return {(str(ds.user_ids[u]), str(ds.item_ids[i]), names[b])
            for u, i, b in zip(ds.train_user.tolist(), ds.train_item.tolist(), ds.train_behavior.tolist())}


@pytest.mark.parametrize("option, extra", [
    (None, set()),
    ("drop", set()),
    # strictly earlier than the pair's own purchase: B's view (25 < 30), C's cart (5 < 20); C's
    # view at 20 ties its purchase and goes, B's cart at 40 came after it
    ("before", {("u1", "B", "view"), ("u1", "C", "cart")}),
    ("keep", {("u1", "B", "view"), ("u1", "B", "cart"), ("u1", "C", "view"), ("u1", "C", "cart")}),
])
def test_raw_log_held_out_pairs(tmp_path, option, extra):
    src = tmp_path / "log.csv"
    src.write_text(EVENTS)
    args = ["--held-out-auxiliary", option] if option else []
    run_cli_ok("preprocess", "csv", src, "--behaviors", "view,cart,buy", "-o", tmp_path / "d", "-q",
               "--negatives", "1", *args)
    ds = load_dataset(tmp_path / "d")
    raw = lambda a: [(str(ds.user_ids[u]), str(ds.item_ids[i])) for u, i in a.tolist()]  # noqa: E731
    assert raw(ds.test) == [("u1", "B"), ("u2", "F")] and raw(ds.valid) == [("u1", "C"), ("u2", "E")]
    assert _edges(ds) == ALWAYS | extra
    assert ds.options["held_out_auxiliary"] == (option or "auto")
    assert ds.options["stats"]["held_out_auxiliary"] == (option or "drop")
    assert "test_pairs_in_auxiliary" not in ds.options["stats"]


def _write_pickle_split(folder):
    """User 0 buys items 1 (t=5) and 2 (t=6), views 2 at 3 and carts it at 9; user 1 buys 0 and 3
    (t=7, 8) and views 0, 3 and 4."""
    folder.mkdir()
    buy = sp.csr_matrix(np.array([[0, 5, 6, 0, 0], [7, 0, 0, 8, 0]], dtype=np.int64))
    view = sp.csr_matrix(np.array([[0, 0, 3, 0, 0], [1, 0, 0, 4, 2]], dtype=np.int64))
    cart = sp.csr_matrix(np.array([[0, 0, 9, 0, 0], [0, 0, 0, 0, 0]], dtype=np.int64))
    for name, m in (("view", view), ("cart", cart), ("buy", buy)):
        (folder / f"trn_{name}").write_bytes(pickle.dumps(m))
    (folder / "tst_int").write_bytes(pickle.dumps([3, None]))
    return folder


@pytest.mark.parametrize("option, kept", [
    (None, set()), ("drop", set()), ("before", {(0, 2, "view")}),
    ("keep", {(0, 2, "view"), (0, 2, "cart")}),
])
def test_cml_pickle_validation_pair(tmp_path, option, kept):
    src = _write_pickle_split(tmp_path / "p")
    args = ["--held-out-auxiliary", option] if option else []
    run_cli_ok("preprocess", "cml-pickle", src, "-o", tmp_path / "d", "-q", "--negatives", "1", *args)
    ds = load_dataset(tmp_path / "d")
    assert ds.valid.tolist() == [[0, 2]] and ds.test.tolist() == [[0, 3]]
    on_pair = {(int(u), int(i), b) for u, i, b in
               ((int(a), int(c), ds.behaviors[k]) for a, c, k in
                zip(ds.train_user, ds.train_item, ds.train_behavior)) if (u, i) == (0, 2)}
    assert on_pair == kept
    m = ds.options["stats"]["test_pairs_in_auxiliary"]
    assert (m["pairs"], m["of"], m["test_split"]) == (0, 1, "removed")  # the test pair is in no matrix
    assert ds.options["stats"]["held_out_auxiliary"] == (option or "drop")


def test_cml_pickle_whose_test_pairs_stay_viewed_keeps_the_validation_pair_viewed(tmp_path):
    src = _write_pickle_split(tmp_path / "p")
    (src / "tst_int").write_bytes(pickle.dumps([None, 4]))  # user 1 viewed the test item 4
    run_cli_ok("preprocess", "cml-pickle", src, "-o", tmp_path / "d", "-q", "--negatives", "1")
    ds = load_dataset(tmp_path / "d")
    m = ds.options["stats"]["test_pairs_in_auxiliary"]
    assert (m["pairs"], m["of"], m["by_behavior"], m["test_split"]) == (1, 1, {"view": 1, "cart": 0}, "kept")
    assert ds.options["stats"]["held_out_auxiliary"] == "keep"
    assert ds.valid.tolist() == [[1, 3]]  # user 1's latest training purchase, viewed too
    assert (1, 3) in set(zip(*(a.tolist() for a in ds.edges("view"))))
    assert (1, 3) not in set(zip(*(a.tolist() for a in ds.edges("buy"))))


def test_unknown_policy_is_refused(tmp_path):
    src = _write_pickle_split(tmp_path / "p")
    res = run_cli("preprocess", "cml-pickle", src, "-o", tmp_path / "d", "--held-out-auxiliary", "some")
    assert res.exit_code == 2 and "--held-out-auxiliary" in res.stderr
    assert not (tmp_path / "d").exists()
