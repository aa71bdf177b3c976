"""`cml preprocess cml-pickle` on SSLRec's layout of the published splits (HKUDS/SSLRec).

SSLRec's ``datasets/multi_behavior/<name>/`` holds ``train_mat_<behavior>.pkl`` (the authors'
``trn_<behavior>`` csr matrices dumped again under that name), ``test_mat.pkl`` (a ``coo_matrix`` of
ones built from ``tst_int``), HMGCR's meta-path matrices ``train_mat_<b1>_<b2>[...].pkl`` and
``meta_multi_single_beh_user_index_shuffle``; the fixtures below are written the same way.
"""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from cml_dgl.data import safe_pickle
from cml_dgl.data.dataset import load_dataset
from cml_dgl.data.sources import cml_pickle
from conftest import assert_one_line_error, run_cli, run_cli_ok

DATASETS = {
    "retail_rocket": ("view", "cart", "buy"),
    "tmall": ("pv", "fav", "cart", "buy"),
    "ijcai_15": ("click", "fav", "cart", "buy"),
}
N_USERS, N_ITEMS = 36, 160


def run(*args):
    return run_cli(*args, catch_exceptions=False)


ok = run_cli_ok


def refused(res, out, *fragments):
    err = assert_one_line_error(res, *fragments)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))
    return err


def make_split(behaviors, seed=0):
    """Random published split: per-behavior csr matrices of int64 unix times, tst_int, meta users."""
    rng = np.random.default_rng(seed)
    test = [int(rng.integers(N_ITEMS)) if u % 6 else None for u in range(N_USERS)]
    mats = {}
    for k, name in enumerate(behaviors):
        m = (rng.random((N_USERS, N_ITEMS)) < 0.12 / (k + 1)).astype(np.int64)
        m *= rng.integers(1_400_000_000, 1_450_000_000, (N_USERS, N_ITEMS))
        if name == "buy":  # every user buys, and at some equal times (ties go to the larger item)
            m[np.arange(N_USERS), (np.arange(N_USERS) * 7) % N_ITEMS] = 1_460_000_000
            m[np.arange(N_USERS), (np.arange(N_USERS) * 7 + 3) % N_ITEMS] = 1_460_000_000
        for u, t in enumerate(test):
            if t is not None:
                m[u, t] = 0
        mats[name] = sp.csr_matrix(m)
    meta = rng.permutation(N_USERS)[:20].astype(np.int64)
    return mats, test, meta


def write_authors(folder, mats, test, meta):
    folder.mkdir(parents=True, exist_ok=True)
    for name, m in mats.items():
        (folder / f"trn_{name}").write_bytes(pickle.dumps(m))
    (folder / "tst_int").write_bytes(pickle.dumps(test))
    (folder / "meta_multi_single_beh_user_index_shuffle").write_bytes(pickle.dumps(meta))


def sslrec_test_mat(test, shape=(N_USERS, N_ITEMS)):
    """What SSLRec's conversion script does: csr_matrix of ones from tst_int, then .tocoo()."""
    users = [u for u, t in enumerate(test) if t is not None]
    return sp.csr_matrix((np.ones(len(users)), (users, [test[u] for u in users])), shape=shape).tocoo()


def write_sslrec(folder, mats, test, meta, meta_paths=True):
    folder.mkdir(parents=True, exist_ok=True)
    for name, m in mats.items():
        (folder / f"train_mat_{name}.pkl").write_bytes(pickle.dumps(m))
    names = list(mats)
    if meta_paths:  # HMGCR's train_mat_view_buy.pkl, train_mat_view_cart_buy.pkl, ...: not behaviors
        for j in range(1, len(names) - 1):
            path = names[:j] + names[-1:]
            union = sum((mats[b] != 0).astype(np.int64) for b in path)
            (folder / f"train_mat_{'_'.join(path)}.pkl").write_bytes(pickle.dumps(union))
        union = sum((mats[b] != 0).astype(np.int64) for b in names)
        (folder / f"train_mat_{'_'.join(names)}.pkl").write_bytes(pickle.dumps(union))
    (folder / "test_mat.pkl").write_bytes(pickle.dumps(sslrec_test_mat(test)))
    (folder / "meta_multi_single_beh_user_index_shuffle").write_bytes(pickle.dumps(meta))


ARRAYS = ("train_user", "train_item", "train_behavior", "train_time", "valid", "test",
          "valid_negatives", "test_negatives", "user_ids", "item_ids", "meta_users")


def assert_same_dataset(a_dir, b_dir):
    a, b = load_dataset(a_dir), load_dataset(b_dir)
    for k in ARRAYS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    ma, mb = (json.loads((d / "meta.json").read_text()) for d in (a_dir, b_dir))
    for k in ("behaviors", "target", "n_users", "n_items", "train_edges", "valid_users", "test_users",
              "n_negatives", "id_map_checksum", "files"):
        assert ma[k] == mb[k], k
    assert ma["options"]["stats"] == mb["options"]["stats"]
    return a


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_sslrec_folder_gives_the_dataset_of_the_authors_layout(tmp_path, dataset):
    behaviors = DATASETS[dataset]
    mats, test, meta = make_split(behaviors, seed=len(dataset))
    write_authors(tmp_path / "authors", mats, test, meta)
    write_sslrec(tmp_path / dataset, mats, test, meta)
    for flags, tag in (([], "carved"), (["--no-valid"], "whole")):
        ok("preprocess", "cml-pickle", tmp_path / "authors", "-o", tmp_path / f"a-{tag}", "-q", *flags)
        ok("preprocess", "cml-pickle", tmp_path / dataset, "-o", tmp_path / f"s-{tag}", "-q", *flags)
        ds = assert_same_dataset(tmp_path / f"a-{tag}", tmp_path / f"s-{tag}")
        assert ds.behaviors == list(behaviors) and ds.target == "buy"
        assert ds.test.tolist() == [[u, t] for u, t in enumerate(test) if t is not None]
        np.testing.assert_array_equal(ds.meta_users, meta)

    whole = load_dataset(tmp_path / "s-whole")  # the published split itself, edge for edge
    for name, m in mats.items():
        u, i = whole.edges(name)
        coo = m.tocoo()
        assert sorted(zip(u.tolist(), i.tolist())) == sorted(zip(coo.row.tolist(), coo.col.tolist()))
    carved = load_dataset(tmp_path / "s-carved")
    assert 0 < len(carved.valid) == len(carved.test)
    buy = mats["buy"]
    for (u, v), negs in zip(carved.valid.tolist(), carved.valid_negatives):
        row = buy[u]
        assert v == max(zip(row.data.tolist(), row.indices.tolist()))[1]  # latest, ties: larger item
        bought = set(row.indices.tolist()) | {test[u]}
        assert not bought & set(negs.tolist()) and len(set(negs.tolist())) == negs.size
    for (u, t), negs in zip(carved.test.tolist(), carved.test_negatives):
        assert not (set(buy[u].indices.tolist()) | {t}) & set(negs.tolist())


def pre_scipy_113_pickle(m):
    """Pickle a coo_matrix with ``row``/``col`` in its state, as scipy < 1.13 wrote it."""
    m = m.copy()
    m.__dict__["row"], m.__dict__["col"] = m.__dict__.pop("coords")
    return pickle.dumps(m, protocol=2)


def test_read_takes_the_behaviors_in_order_and_ignores_meta_path_matrices(tmp_path):
    mats, test, meta = make_split(DATASETS["tmall"])
    write_sslrec(tmp_path / "tmall", mats, test, meta)
    assert (tmp_path / "tmall" / "train_mat_pv_fav_cart_buy.pkl").is_file()
    old = pre_scipy_113_pickle(sslrec_test_mat(test))
    assert b"coords" not in old and b"row" in old
    (tmp_path / "tmall" / "test_mat.pkl").write_bytes(old)
    (tmp_path / "tmall" / "meta_multi_single_beh_user_index_shuffle").unlink()
    split = cml_pickle.read(tmp_path / "tmall")
    assert split.behaviors == ["pv", "fav", "cart", "buy"]
    assert split.meta_users is None
    assert split.test.tolist() == [[u, t] for u, t in enumerate(test) if t is not None]
    for k, name in enumerate(split.behaviors):
        sel = split.behavior == k
        coo = mats[name].tocoo()
        assert sorted(zip(split.user[sel].tolist(), split.item[sel].tolist(), split.time[sel].tolist())) \
            == sorted(zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist()))


def test_sslrec_test_mat_goes_with_tst_int_and_either_layout(tmp_path):
    mats, test, meta = make_split(DATASETS["retail_rocket"], seed=3)
    write_sslrec(tmp_path / "s", mats, test, meta, meta_paths=False)
    (tmp_path / "s" / "test_mat.pkl").unlink()
    (tmp_path / "s" / "tst_int").write_bytes(pickle.dumps(test))
    write_authors(tmp_path / "a", mats, test, meta)
    ok("preprocess", "cml-pickle", tmp_path / "s", "-o", tmp_path / "ds", "-q")
    ok("preprocess", "cml-pickle", tmp_path / "a", "-o", tmp_path / "da", "-q")
    assert_same_dataset(tmp_path / "da", tmp_path / "ds")


def test_a_folder_holding_identical_copies_in_both_layouts_is_read_once(tmp_path):
    """SSLRec's own folders ship trn_<b> and tst_int next to train_mat_<b>.pkl and test_mat.pkl."""
    mats, test, meta = make_split(DATASETS["retail_rocket"], seed=5)
    write_authors(tmp_path / "a", mats, test, meta)
    write_authors(tmp_path / "both", mats, test, meta)
    write_sslrec(tmp_path / "both", mats, test, meta)
    ok("preprocess", "cml-pickle", tmp_path / "a", "-o", tmp_path / "da", "-q")
    ok("preprocess", "cml-pickle", tmp_path / "both", "-o", tmp_path / "db", "-q")
    assert_same_dataset(tmp_path / "da", tmp_path / "db")
    ok("preprocess", "cml-pickle", tmp_path / "both", "-o", tmp_path / "dc", "-q",
       "--behaviors", "view,cart,buy")
    assert_same_dataset(tmp_path / "da", tmp_path / "dc")


def test_stray_sslrec_files_next_to_the_authors_layout_are_not_a_second_layout(tmp_path):
    """Only meta-path matrices and suffix-less train_mat_ files next to trn_*: the authors' layout."""
    mats, test, meta = make_split(DATASETS["tmall"], seed=6)
    write_authors(tmp_path / "a", mats, test, meta)
    write_authors(tmp_path / "t", mats, test, meta)
    (tmp_path / "t" / "train_mat_pv_buy.pkl").write_bytes(pickle.dumps(mats["fav"]))
    (tmp_path / "t" / "train_mat_cart").write_bytes(pickle.dumps(mats["buy"]))
    ok("preprocess", "cml-pickle", tmp_path / "a", "-o", tmp_path / "da", "-q")
    ok("preprocess", "cml-pickle", tmp_path / "t", "-o", tmp_path / "dt", "-q")
    assert_same_dataset(tmp_path / "da", tmp_path / "dt")


@pytest.fixture
def mixed(tmp_path):
    mats, test, meta = make_split(DATASETS["retail_rocket"], seed=7)
    folder = tmp_path / "mixed"
    write_authors(folder, mats, test, meta)
    write_sslrec(folder, mats, test, meta)
    return folder, mats, test


def test_mixed_layouts_that_disagree_are_refused(mixed, tmp_path):
    folder, mats, test = mixed
    out = tmp_path / "out"
    buy = mats["buy"].copy()
    u = int(np.flatnonzero(np.diff(buy.indptr))[0])
    i = int(buy.indices[buy.indptr[u]])
    buy.data[buy.indptr[u]] += 1
    (folder / "train_mat_buy.pkl").write_bytes(pickle.dumps(buy))
    refused(run("preprocess", "cml-pickle", folder, "-o", out, "-q"), out, str(folder),
            "trn_buy and train_mat_buy.pkl hold different matrices",
            f"first difference at user {u}, item {i}",
            "keep one layout's files")
    (folder / "train_mat_buy.pkl").write_bytes(pickle.dumps(sp.csr_matrix(mats["buy"].toarray()[:-1])))
    refused(run("preprocess", "cml-pickle", folder, "-o", out, "-q"), out,
            f"shapes ({N_USERS}, {N_ITEMS}) and ({N_USERS - 1}, {N_ITEMS})")
    (folder / "train_mat_buy.pkl").write_bytes(pickle.dumps(mats["buy"]))

    (folder / "train_mat_cart.pkl").rename(folder / "train_mat_basket.pkl")
    refused(run("preprocess", "cml-pickle", folder, "-o", out, "-q"), out,
            "mixes the authors' layout (trn_ files for: buy, cart, view)",
            "(train_mat_<behavior>.pkl files for: basket, buy, view)", "different behaviors")
    refused(run("preprocess", "cml-pickle", folder, "-o", out, "-q", "--behaviors", "view,cart,buy"), out,
            "no file train_mat_cart.pkl for behavior 'cart'", "a folder mixing both layouts")
    (folder / "train_mat_basket.pkl").rename(folder / "train_mat_cart.pkl")

    other = list(test)
    u = next(k for k, t in enumerate(other) if t is not None)
    other[u] = (other[u] + 1) % N_ITEMS
    (folder / "tst_int").write_bytes(pickle.dumps(other))
    refused(run("preprocess", "cml-pickle", folder, "-o", out, "-q"), out,
            "tst_int and test_mat.pkl hold different test items",
            f"user {u} item {other[u]} in tst_int, user {u} item {test[u]} in test_mat.pkl")
    other[u] = None
    (folder / "tst_int").write_bytes(pickle.dumps(other))
    n = sum(t is not None for t in test)
    refused(run("preprocess", "cml-pickle", folder, "-o", out, "-q"), out,
            f"({n - 1} and {n} test users)")


def test_sslrec_folder_missing_pieces(tmp_path):
    mats, test, meta = make_split(DATASETS["retail_rocket"], seed=9)
    folder = tmp_path / "retail_rocket"
    write_sslrec(folder, mats, test, meta)
    out = tmp_path / "out"
    (folder / "test_mat.pkl").unlink()
    refused(run("preprocess", "cml-pickle", folder, "-o", out, "-q"), out,
            f"{folder / 'test_mat.pkl'}: no such file",
            "(SSLRec's layout holds its test items there, or in tst_int)")
    (folder / "test_mat.pkl").write_bytes(pickle.dumps(sslrec_test_mat(test)))
    (folder / "train_mat_buy.pkl").unlink()
    refused(run("preprocess", "cml-pickle", folder, "-o", out, "-q"), out,
            "no train_mat_buy.pkl (the train_mat_<behavior>.pkl files cover only cart, view:",
            "pass --behaviors")
    ok("preprocess", "cml-pickle", folder, "-o", out, "-q", "--behaviors", "view,cart", "--negatives", "5")
    assert load_dataset(out).behaviors == ["view", "cart"]
    shutil.rmtree(out)
    refused(run("preprocess", "cml-pickle", folder, "-o", out, "-q", "--behaviors", "view,buy"), out,
            "no file train_mat_buy.pkl for behavior 'buy'")

    bare = tmp_path / "no_suffix"
    bare.mkdir()
    (bare / "train_mat_cart").write_bytes(pickle.dumps(mats["cart"]))
    refused(run("preprocess", "cml-pickle", bare, "-o", out, "-q"), out,
            "no trn_<behavior> files (the authors' layout, with tst_int) or train_mat_<behavior>.pkl files",
            "train_mat_cart lacks the .pkl suffix")


def test_unknown_sslrec_behaviors_need_their_order(tmp_path):
    mats, test, meta = make_split(("click2", "cart", "buy"), seed=11)
    write_sslrec(tmp_path / "x", mats, test, meta, meta_paths=False)
    out = tmp_path / "out"
    refused(run("preprocess", "cml-pickle", tmp_path / "x", "-o", out, "-q"), out,
            "cannot tell the order of behaviors buy, cart, click2", "pass --behaviors")
    ok("preprocess", "cml-pickle", tmp_path / "x", "-o", out, "-q", "--behaviors", "click2,cart,buy")
    ds = load_dataset(out)
    assert ds.behaviors == ["click2", "cart", "buy"] and ds.train_counts()["click2"] > 0


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name,payload,expected", [
    ("train_mat_cart.pkl", "evil", "refused to unpickle: it references posix.system"),
    ("test_mat.pkl", "evil", "refused to unpickle"),
    ("train_mat_buy.pkl", {"not": "a matrix"},
     "expected a pickled scipy.sparse users x items matrix, got dict"),
    ("train_mat_view.pkl", b"\x80\x04truncated", "not a readable pickle"),
    ("test_mat.pkl", sp.coo_matrix(([1.0, 1.0], ([2, 2], [0, 1])), shape=(N_USERS, N_ITEMS)),
     "user 2 has more than one test item"),
    ("test_mat.pkl", sp.coo_matrix((N_USERS + 1, N_ITEMS)),
     f"shape ({N_USERS + 1}, {N_ITEMS}) differs from the train_mat_ matrices' ({N_USERS}, {N_ITEMS})"),
    ("test_mat.pkl", sp.coo_matrix(([0.5], ([2], [0])), shape=(N_USERS, N_ITEMS)),
     "expected integer timestamps as matrix values, found fractions"),
    ("meta_multi_single_beh_user_index_shuffle", np.array([0, N_USERS]),
     f"meta user ids must lie in [0, {N_USERS})"),
])
def test_sslrec_wrong_contents(tmp_path, name, payload, expected):
    mats, test, meta = make_split(DATASETS["retail_rocket"], seed=13)
    folder = tmp_path / "retail_rocket"
    write_sslrec(folder, mats, test, meta)
    marker = tmp_path / "pwned"
    if isinstance(payload, str):
        payload = _Evil(marker)
    (folder / name).write_bytes(payload if isinstance(payload, bytes) else pickle.dumps(payload))
    out = tmp_path / "out"
    refused(run("preprocess", "cml-pickle", folder, "-o", out, "-q"), out, f"{folder / name}: {expected}")
    assert not marker.exists()


def test_real_retailrocket_in_sslrec_layout_gives_the_published_dataset(shared_data, tmp_path):
    """The real split, laid out as SSLRec ships it (train_mat_<b>.pkl copies, test_mat.pkl from tst_int)."""
    src = shared_data / "retailrocket"
    folder = tmp_path / "retail_rocket"
    folder.mkdir()
    for b in ("view", "cart", "buy"):
        shutil.copyfile(src / f"trn_{b}", folder / f"train_mat_{b}.pkl")
    meta = "meta_multi_single_beh_user_index_shuffle"
    shutil.copyfile(src / meta, folder / meta)
    test = safe_pickle.restricted_load(src / "tst_int")
    (folder / "test_mat.pkl").write_bytes(pickle.dumps(sslrec_test_mat(test, shape=(2174, 30113))))
    ok("preprocess", "cml-pickle", src, "-o", tmp_path / "authors", "-q")
    ok("preprocess", "cml-pickle", folder, "-o", tmp_path / "sslrec", "-q")
    ds = assert_same_dataset(tmp_path / "authors", tmp_path / "sslrec")
    assert (ds.n_users, ds.n_items, len(ds.test), len(ds.meta_users)) == (2174, 30113, 2174, 2008)
