"""`cml preprocess` / `cml info` end to end on small hand-made files of every source."""

import json
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from cml_dgl.data.dataset import load_dataset
from conftest import run_cli, run_cli_ok


def run(*args):
    return run_cli(*args, catch_exceptions=False)


ok = run_cli_ok


def write_taobao(path, n_users=30, n_items=400, rows=4000, seed=0):
    """Random UserBehavior rows; every user buys at least 4 distinct items."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_users, rows) * 7 + 1000
    i = rng.integers(0, n_items, rows) * 3 + 5
    b = rng.choice(["pv", "fav", "cart", "buy"], rows, p=[0.7, 0.1, 0.1, 0.1])
    t = rng.integers(1_511_500_000, 1_512_300_000, rows)
    extra_u = np.repeat(np.arange(n_users) * 7 + 1000, 4)
    extra_i = (np.tile(np.arange(4), n_users) + np.repeat(np.arange(n_users), 4)) * 3 + 5
    u, i = np.concatenate([u, extra_u]), np.concatenate([i, extra_i])
    b = np.concatenate([b, np.full(len(extra_u), "buy")])
    t = np.concatenate([t, rng.integers(1_511_500_000, 1_512_300_000, len(extra_u))])
    lines = [f"{a},{c},{c % 13},{d},{e}" for a, c, d, e in zip(u, i, b, t)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _arrays(path):
    ds = load_dataset(path)
    return ds, {k: getattr(ds, k) for k in ("train_user", "train_item", "train_behavior", "train_time",
                                            "valid", "test", "valid_negatives", "test_negatives",
                                            "user_ids", "item_ids")}


def test_taobao_and_tmall_alias_give_the_same_dataset_and_info_reports_it(tmp_path):
    src = write_taobao(tmp_path / "UserBehavior.csv")
    res = ok("preprocess", "taobao", src, "-o", tmp_path / "a", "--quiet")
    assert "wrote" in res.output and "test users" in res.output
    ok("preprocess", "tmall", src, "-o", tmp_path / "b", "--quiet")
    ds, a = _arrays(tmp_path / "a")
    _, b = _arrays(tmp_path / "b")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert ds.behaviors == ["pv", "fav", "cart", "buy"] and ds.source == "taobao"
    assert ds.user_ids.dtype == np.int64 and np.all(np.diff(ds.user_ids) > 0)
    assert ds.meta_users is None
    assert ds.options["min_purchases"] == 3 and ds.options["seed"] == 2023
    assert ds.options["negatives"] == 99 and ds.options["valid"] is True
    info = json.loads(ok("info", tmp_path / "a", "--json").output)
    assert info["n_users"] == ds.n_users == 30 and info["n_items"] == ds.n_items
    assert info["behaviors"] == ["pv", "fav", "cart", "buy"] and info["target"] == "buy"
    assert info["train_edges"] == ds.train_counts() and info["source"] == "taobao"
    assert info["valid_users"] == info["test_users"] == 30
    text = ok("info", tmp_path / "a").output
    assert "users     30" in text and "target buy" in text


def test_held_out_pairs_and_negatives_follow_the_rules(tmp_path):
    src = write_taobao(tmp_path / "ub.csv", seed=4)
    ok("preprocess", "taobao", src, "-o", tmp_path / "d", "--quiet", "--seed", "11")
    ds = load_dataset(tmp_path / "d")
    train_pairs = set(zip(ds.train_user.tolist(), ds.train_item.tolist()))
    bought = {}
    for u, i in zip(*ds.edges("buy")):
        bought.setdefault(int(u), set()).add(int(i))
    for (u, v), (u2, t) in zip(ds.valid.tolist(), ds.test.tolist()):
        assert u == u2 and v != t
        assert (u, v) not in train_pairs and (u, t) not in train_pairs
    all_bought = {u: bought.get(u, set()) | {v, t} for (u, v), (_, t) in zip(ds.valid.tolist(), ds.test.tolist())}
    for split, negs in ((ds.valid, ds.valid_negatives), (ds.test, ds.test_negatives)):
        assert negs.shape == (len(split), 99)
        for (u, _), row in zip(split.tolist(), negs.tolist()):
            assert len(set(row)) == 99 and not set(row) & all_bought[u]
    ok("preprocess", "taobao", src, "-o", tmp_path / "e", "--quiet", "--seed", "11")
    np.testing.assert_array_equal(load_dataset(tmp_path / "e").test_negatives, ds.test_negatives)
    ok("preprocess", "taobao", src, "-o", tmp_path / "f", "--quiet", "--seed", "12")
    assert (load_dataset(tmp_path / "f").test_negatives != ds.test_negatives).any()


def test_ijcai15_full_and_reduced_layouts_read_alike(tmp_path):
    rng = np.random.default_rng(2)
    rows = 3000
    u = rng.integers(1, 20, rows)
    i = rng.integers(1, 300, rows)
    t = rng.integers(5, 12, rows) * 100 + rng.integers(1, 29, rows)
    a = rng.choice([0, 1, 2, 3], rows, p=[0.6, 0.1, 0.2, 0.1])
    full = ["user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type"]
    full += [f"{x},{y},{y % 7},{y % 5},,{z},{w}" for x, y, z, w in zip(u, i, t, a)]
    reduced = [",user_id,item_id,time_stamp,action_type"]
    reduced += [f"{k},{x},{y},{z},{w}" for k, (x, y, z, w) in enumerate(zip(u, i, t, a))]
    (tmp_path / "full.csv").write_text("\n".join(full) + "\n")
    (tmp_path / "red.csv").write_text("\n".join(reduced) + "\n")
    ok("preprocess", "ijcai15", tmp_path / "full.csv", "-o", tmp_path / "f", "-q")
    ok("preprocess", "ijcai15", tmp_path / "red.csv", "-o", tmp_path / "r", "-q")
    ds, f = _arrays(tmp_path / "f")
    _, r = _arrays(tmp_path / "r")
    for k in f:
        np.testing.assert_array_equal(f[k], r[k], err_msg=k)
    assert ds.behaviors == ["click", "fav", "cart", "buy"]
    # action_type 2 is the purchase: every test item is a logged (user, item, 2) row
    logged = set(zip(u[a == 2].tolist(), i[a == 2].tolist()))
    assert {(int(ds.user_ids[x]), int(ds.item_ids[y])) for x, y in ds.test.tolist()} <= logged


def test_retailrocket_times_are_seconds_and_behaviors_named(tmp_path):
    lines = ["timestamp,visitorid,event,itemid,transactionid"]
    for user in range(3):
        for k, item in enumerate(range(10, 15)):
            lines.append(f"{1430000000000 + 1000 * k + 999},{user},transaction,{item},{k}")
            lines.append(f"{1430000000000 + 1000 * k},{user},view,{item},")
        lines.append(f"1430000005000,{user},addtocart,99,")
    (tmp_path / "events.csv").write_text("\n".join(lines) + "\n")
    ok("preprocess", "retailrocket", tmp_path / "events.csv", "-o", tmp_path / "d", "-q",
       "--negatives", "1")
    ds = load_dataset(tmp_path / "d")
    assert ds.behaviors == ["view", "cart", "buy"]
    assert ds.train_time.min() == 1430000000 and ds.train_time.max() == 1430000005
    assert ds.item_ids[ds.test[:, 1]].tolist() == [14, 14, 14]
    assert ds.item_ids[ds.valid[:, 1]].tolist() == [13, 13, 13]
    assert ds.test_negatives.shape == (3, 1) and ds.test_negatives.ravel().tolist() == [5, 5, 5]
    assert ds.options["time_unit"] == "s"


def test_generic_csv_with_string_ids_and_given_behaviors(tmp_path):
    rows = ["timestamp,item,user,behavior,channel"]
    for k, user in enumerate(["ann", "bob", "cy"]):
        for j in range(6):
            rows.append(f"{100 + j},sku-{j + k},{user},order,web")
            rows.append(f"{90 + j},sku-{j + k},{user},look,web")
    rows.append("1,sku-0,dee,look,app")
    (tmp_path / "shop.csv").write_text("\n".join(rows) + "\n")
    ok("preprocess", "csv", tmp_path / "shop.csv", "-o", tmp_path / "d", "-q",
       "--behaviors", "look,order", "--negatives", "2", "--min-purchases", "1")
    ds = load_dataset(tmp_path / "d")
    assert ds.behaviors == ["look", "order"] and ds.target == "order"
    assert ds.user_ids.dtype.kind == "U" and list(ds.user_ids) == ["ann", "bob", "cy"]
    assert [ds.item_ids[i] for i in ds.test[:, 1]] == ["sku-5", "sku-6", "sku-7"]
    assert ds.options["behaviors"] == ["look", "order"]
    num = tmp_path / "num.csv"
    num.write_text("user,item,behavior,timestamp\n" + "\n".join(
        f"{u},{i},{'buy' if i % 2 else 'view'},{i}" for u in (3, 12) for i in range(1, 9)) + "\n")
    ok("preprocess", "csv", num, "-o", tmp_path / "n", "-q", "--behaviors", "view,buy", "--negatives", "3")
    dn = load_dataset(tmp_path / "n")
    assert dn.user_ids.dtype == np.int64 and dn.user_ids.tolist() == [3, 12]


def write_published(folder, n_users=40, n_items=200, seed=0, meta=True):
    """A small published split: trn_view/cart/buy csr matrices of times, tst_int, meta users."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    test = [int(x) for x in rng.integers(0, n_items, n_users)]
    test[3] = None
    mats = {}
    for name, density in (("view", 0.1), ("cart", 0.03), ("buy", 0.02)):
        m = (rng.random((n_users, n_items)) < density).astype(np.int64)
        m *= rng.integers(1_400_000_000, 1_450_000_000, (n_users, n_items))
        if name == "buy":
            m[np.arange(n_users), (np.arange(n_users) * 7) % n_items] = 1_460_000_000 + np.arange(n_users)
        for u, t in enumerate(test):
            if t is not None:
                m[u, t] = 0
        mats[name] = sp.csr_matrix(m)
        (folder / f"trn_{name}").write_bytes(pickle.dumps(mats[name]))
    (folder / "tst_int").write_bytes(pickle.dumps(test))
    meta_users = rng.permutation(n_users)[:25].astype(np.int64) if meta else None
    if meta:
        (folder / "meta_multi_single_beh_user_index_shuffle").write_bytes(pickle.dumps(meta_users))
    return mats, test, meta_users


def test_cml_pickle_is_kept_as_published_and_validation_is_carved(tmp_path):
    mats, test, meta = write_published(tmp_path / "rr")
    ok("preprocess", "cml-pickle", tmp_path / "rr", "-o", tmp_path / "whole", "-q", "--no-valid")
    ds = load_dataset(tmp_path / "whole")
    assert ds.behaviors == ["view", "cart", "buy"]
    assert ds.train_counts() == {k: m.nnz for k, m in mats.items()}
    expected_test = [[u, t] for u, t in enumerate(test) if t is not None]
    assert ds.test.tolist() == expected_test
    assert ds.valid.shape == (0, 2) and ds.valid_negatives.shape == (0, 99)
    assert ds.user_ids.tolist() == list(range(40)) and ds.item_ids.tolist() == list(range(200))
    np.testing.assert_array_equal(ds.meta_users, meta)
    for k, m in mats.items():
        u, i = ds.edges(k)
        coo = m.tocoo()
        assert sorted(zip(u.tolist(), i.tolist())) == sorted(zip(coo.row.tolist(), coo.col.tolist()))

    ok("preprocess", "cml-pickle", tmp_path / "rr", "-o", tmp_path / "carved", "-q")
    dv = load_dataset(tmp_path / "carved")
    assert dv.test.tolist() == expected_test
    buy = mats["buy"].tocsr()
    for u, v in dv.valid.tolist():
        row = buy[u]
        times = dict(zip(row.indices.tolist(), row.data.tolist()))
        latest = max(times.items(), key=lambda kv: (kv[1], kv[0]))[0]
        assert v == latest  # the latest training purchase of a test user
    assert sorted(dv.valid[:, 0].tolist()) == [u for u, t in enumerate(test) if t is not None]
    held = set(map(tuple, dv.valid.tolist()))
    assert not held & set(zip(dv.train_user.tolist(), dv.train_item.tolist()))
    removed = sum(int(m[u, v] != 0) for m in mats.values() for u, v in held)
    assert sum(dv.train_counts().values()) == sum(m.nnz for m in mats.values()) - removed


def test_cml_pickle_reads_sslrec_test_matrix_when_tst_int_is_absent(tmp_path):
    _, test, _ = write_published(tmp_path / "rr", meta=False)
    ok("preprocess", "cml-pickle", tmp_path / "rr", "-o", tmp_path / "a", "-q")
    users = [u for u, t in enumerate(test) if t is not None]
    mat = sp.coo_matrix((np.ones(len(users)), (users, [test[u] for u in users])), shape=(40, 200))
    (tmp_path / "rr" / "tst_int").unlink()
    (tmp_path / "rr" / "test_mat.pkl").write_bytes(pickle.dumps(mat))
    ok("preprocess", "cml-pickle", tmp_path / "rr", "-o", tmp_path / "b", "-q")
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    assert b.test.tolist() == [[u, test[u]] for u in users]
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_array_equal(a.test_negatives, b.test_negatives)


def test_cml_pickle_unknown_behavior_set_needs_behaviors(tmp_path):
    write_published(tmp_path / "x", meta=False)
    (tmp_path / "x" / "trn_view").rename(tmp_path / "x" / "trn_click2")
    res = run("preprocess", "cml-pickle", tmp_path / "x", "-o", tmp_path / "d", "-q")
    assert res.exit_code == 2 and "pass --behaviors" in res.stderr
    ok("preprocess", "cml-pickle", tmp_path / "x", "-o", tmp_path / "d", "-q",
       "--behaviors", "click2,cart,buy")
    ds = load_dataset(tmp_path / "d")
    assert ds.behaviors == ["click2", "cart", "buy"] and ds.meta_users is None


def test_existing_outdir_refused_unless_overwrite(tmp_path):
    src = write_taobao(tmp_path / "ub.csv")
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = run("preprocess", "taobao", src, "-o", out, "-q")
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    assert (out / "keep.txt").read_text() == "mine"
    res = run("preprocess", "taobao", src, "-o", out, "-q", "--overwrite")
    assert res.exit_code == 2 and "cml did not write it" in res.stderr, res.stderr
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    ok("preprocess", "taobao", src, "-o", out, "-q")  # an empty folder holds nothing to lose
    ok("preprocess", "taobao", src, "-o", out, "-q", "--overwrite")  # cml's own dataset: replaced
    assert (out / "meta.json").is_file()


def test_progress_bar_on_stderr_unless_quiet(tmp_path):
    src = write_taobao(tmp_path / "ub.csv")
    loud = ok("preprocess", "taobao", src, "-o", tmp_path / "a")
    assert "reading ub.csv" in loud.stderr
    quiet = ok("preprocess", "taobao", src, "-o", tmp_path / "b", "--quiet")
    assert quiet.stderr == ""


def test_help_documents_every_option_with_defaults():
    text = " ".join(ok("preprocess", "--help").output.split())
    for opt in ("--out", "--behaviors", "--min-purchases", "--min-user-interactions",
                "--min-item-interactions", "--no-valid", "--negatives", "--seed", "--block-bytes",
                "--overwrite", "--quiet"):
        assert opt in text
    for default in ("default: 99", "default: 2023", "default: 3 for taobao"):
        assert default in text
    for source in ("taobao", "tmall", "ijcai15", "retailrocket", "cml-pickle", "csv"):
        assert source in text
    assert "--json" in ok("info", "--help").output


@pytest.mark.parametrize("flag", ["--min-purchases", "--min-item-interactions"])
def test_filters_do_not_apply_to_published_splits(tmp_path, flag):
    write_published(tmp_path / "rr")
    res = run("preprocess", "cml-pickle", tmp_path / "rr", "-o", tmp_path / "d", flag, "2")
    assert res.exit_code == 2 and "do not apply" in res.stderr
    assert not (tmp_path / "d").exists()
