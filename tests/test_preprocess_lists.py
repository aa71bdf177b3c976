"""`cml preprocess lists`: adjacency-list splits in MB-CGCN's and GHCF's layouts, on small files.

The expected figures come from the files themselves, read here with plain Python.
"""

import json

import numpy as np
import pytest

from cml_dgl.data.dataset import load_dataset
from conftest import assert_one_line_error, run_cli, run_cli_ok

BEHAVIORS = ("view", "cart", "buy")


def make_split(n_users=30, n_items=150, seed=0):
    """Random adjacency lists: per behavior {user: [items]}, and one test item per user.

    Test items are never training purchases; about half of them are viewed or carted (kept in the
    auxiliary behaviors, as in MB-CGCN's splits). Every user buys at least 2 items.
    """
    rng = np.random.default_rng(seed)
    train = {b: {} for b in BEHAVIORS}
    test = {}
    for u in range(n_users):
        items = rng.permutation(n_items)
        test[u] = int(items[0])
        train["buy"][u] = [int(x) for x in items[1:1 + rng.integers(2, 5)]]
        train["cart"][u] = [int(x) for x in items[rng.integers(0, 2):][:rng.integers(1, 6)]]
        train["view"][u] = [int(x) for x in items[rng.integers(0, 2):][:rng.integers(5, 15)]]
    train["view"][0] = train["view"][0] + [n_items - 1]  # the largest item id is in training
    return train, test


def lines(adj, sep="\t"):
    return "".join(sep.join(map(str, [u, *items])) + "\n" for u, items in adj.items())


def write_mbcgcn(folder, train, test, valid=None, aux_tests=True):
    for b in BEHAVIORS:
        (folder / b).mkdir(parents=True)
        (folder / b / "train.txt").write_text(lines(train[b]))
    (folder / "buy" / "test.txt").write_text(lines({u: [i] for u, i in test.items()}))
    if aux_tests:  # per-behavior holdouts, not targets: ids far out of range prove they are unread
        for b in ("view", "cart"):
            (folder / b / "test.txt").write_text("0\t99999\n")
    if valid is not None:
        (folder / "buy" / "validation.txt").write_text(lines({u: [i] for u, i in valid.items()}))
    return folder


def write_ghcf(folder, train, test):
    """GHCF's layout, space-separated, the auxiliary files one ``user item`` pair per line."""
    folder.mkdir(parents=True)
    (folder / "train.txt").write_text(lines(train["buy"], " "))
    (folder / "pv.txt").write_text("".join(f"{u} {i}\n" for u, its in train["view"].items() for i in its))
    (folder / "cart.txt").write_text("".join(f"{u} {i}\n" for u, its in train["cart"].items() for i in its))
    (folder / "test.txt").write_text(lines({u: [i] for u, i in test.items()}, " "))
    (folder / "sparsity.split").write_text("#users=[3]\n0 1 2\n")
    return folder


def edges(ds, name):
    return set(zip(*(a.tolist() for a in ds.edges(name))))


def pair_set(adj):
    return {(u, i) for u, its in adj.items() for i in its}


def test_mbcgcn_layout_imports_the_published_split(tmp_path):
    train, test = make_split()
    src = write_mbcgcn(tmp_path / "tmall", train, test)
    res = run_cli_ok("preprocess", "lists", src, "-o", tmp_path / "whole", "-q", "--no-valid")
    assert "wrote" in res.stdout
    ds = load_dataset(tmp_path / "whole")
    assert ds.source == "lists" and ds.behaviors == list(BEHAVIORS)
    assert (ds.n_users, ds.n_items) == (30, 150)
    for b in BEHAVIORS:
        assert edges(ds, b) == pair_set(train[b]), b
    assert ds.test.tolist() == [[u, test[u]] for u in sorted(test)]
    assert ds.valid.shape == (0, 2) and ds.meta_users is None
    assert not np.any(ds.train_time) and ds.options["time_unit"] == "none"
    stats = ds.options["stats"]
    assert stats["layout"] == "mb-cgcn"
    assert stats["files"] == ["view/train.txt", "cart/train.txt", "buy/train.txt", "buy/test.txt"]
    aux = pair_set(train["view"]) | pair_set(train["cart"])
    in_aux = [(u, i) in aux for u, i in test.items()]
    m = stats["test_pairs_in_auxiliary"]
    assert m["pairs"] == sum(in_aux) and m["of"] == 30 and 0 < m["pairs"] < 30
    assert m["fraction"] == pytest.approx(sum(in_aux) / 30, abs=1e-6)
    assert m["by_behavior"] == {b: sum((u, i) in pair_set(train[b]) for u, i in test.items())
                                for b in ("view", "cart")}
    assert m["test_split"] == "kept"
    for (u, t), row in zip(ds.test.tolist(), ds.test_negatives.tolist()):
        assert t not in row and not set(row) & set(train["buy"][u])


def test_carved_validation_mimics_a_test_split_that_keeps_auxiliary_edges(tmp_path):
    train, test = make_split()
    src = write_mbcgcn(tmp_path / "tmall", train, test)
    run_cli_ok("preprocess", "lists", src, "-o", tmp_path / "a", "-q")
    ds = load_dataset(tmp_path / "a")
    assert ds.options["stats"]["held_out_auxiliary"] == "keep"
    assert ds.options["held_out_auxiliary"] == "auto"
    assert ds.valid[:, 0].tolist() == sorted(test)
    for u, v in ds.valid.tolist():
        assert v in train["buy"][u]
    held = set(map(tuple, ds.valid.tolist()))
    assert edges(ds, "buy") == pair_set(train["buy"]) - held
    for b in ("view", "cart"):
        assert edges(ds, b) == pair_set(train[b])  # the validation pair stays in view and cart
    assert held & (pair_set(train["view"]) | pair_set(train["cart"]))
    # a seeded uniform pick (no times): the seed fixes it, another seed moves it
    run_cli_ok("preprocess", "lists", src, "-o", tmp_path / "b", "-q")
    run_cli_ok("preprocess", "lists", src, "-o", tmp_path / "c", "-q", "--seed", "7")
    np.testing.assert_array_equal(load_dataset(tmp_path / "b").valid, ds.valid)
    assert load_dataset(tmp_path / "c").valid.tolist() != ds.valid.tolist()

    run_cli_ok("preprocess", "lists", src, "-o", tmp_path / "d", "-q", "--held-out-auxiliary", "drop")
    dd = load_dataset(tmp_path / "d")
    np.testing.assert_array_equal(dd.valid, ds.valid)
    assert dd.options["stats"]["held_out_auxiliary"] == "drop"
    for b in ("view", "cart"):
        assert edges(dd, b) == pair_set(train[b]) - held


def test_ghcf_layout_gives_the_same_dataset(tmp_path):
    train, test = make_split()
    write_mbcgcn(tmp_path / "mb", {"view": train["view"], "cart": train["cart"], "buy": train["buy"]},
                 test)
    (tmp_path / "mb" / "view").rename(tmp_path / "mb" / "pv")
    write_ghcf(tmp_path / "gh", train, test)
    run_cli_ok("preprocess", "lists", tmp_path / "mb", "-o", tmp_path / "a", "-q")
    run_cli_ok("preprocess", "lists", tmp_path / "gh", "-o", tmp_path / "b", "-q")
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    assert a.behaviors == b.behaviors == ["pv", "cart", "buy"]
    assert b.options["stats"]["layout"] == "ghcf"
    assert b.options["stats"]["files"] == ["pv.txt", "cart.txt", "train.txt", "test.txt"]
    for k in ("train_user", "train_item", "train_behavior", "valid", "test", "valid_negatives",
              "test_negatives"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    # --behaviors names the order; the target (train.txt) goes last under the name given
    run_cli_ok("preprocess", "lists", tmp_path / "gh", "-o", tmp_path / "c", "-q",
               "--behaviors", "cart,pv,purchase")
    c = load_dataset(tmp_path / "c")
    assert c.behaviors == ["cart", "pv", "purchase"]
    assert edges(c, "purchase") == edges(a, "buy") and edges(c, "pv") == edges(a, "pv")


def test_published_validation_file_is_used_as_it_is(tmp_path):
    train, test = make_split()
    valid = {u: train["buy"][u][0] for u in range(0, 30, 2)}
    for u, v in valid.items():
        train["buy"][u] = train["buy"][u][1:]
    src = write_mbcgcn(tmp_path / "t", train, test, valid=valid)
    run_cli_ok("preprocess", "lists", src, "-o", tmp_path / "a", "-q")
    ds = load_dataset(tmp_path / "a")
    assert ds.valid.tolist() == [[u, valid[u]] for u in sorted(valid)]
    for b in BEHAVIORS:
        assert edges(ds, b) == pair_set(train[b])
    assert ds.options["stats"]["published_valid_users"] == 15
    assert ds.options["stats"]["held_out_auxiliary"] is None
    assert ds.options["stats"]["files"][-1] == "buy/validation.txt"
    for (u, v), row in zip(ds.valid.tolist(), ds.valid_negatives.tolist()):
        assert v not in row and test[u] not in row
    res = run_cli("preprocess", "lists", src, "-o", tmp_path / "b", "-q", "--held-out-auxiliary", "drop")
    assert_one_line_error(res, "--held-out-auxiliary drop", "publishes its validation split")
    assert not (tmp_path / "b").exists()
    (src / "buy" / "valid.txt").write_text("0\t1\n")
    res = run_cli("preprocess", "lists", src, "-o", tmp_path / "c", "-q")
    assert_one_line_error(res, "valid.txt and validation.txt")


def test_before_needs_times(tmp_path):
    train, test = make_split()
    src = write_mbcgcn(tmp_path / "t", train, test)
    res = run_cli("preprocess", "lists", src, "-o", tmp_path / "a", "-q", "--held-out-auxiliary", "before")
    assert_one_line_error(res, "holds no times")
    res = run_cli("preprocess", "lists", src, "-o", tmp_path / "a", "--no-valid", "-q",
                  "--held-out-auxiliary", "keep")
    assert_one_line_error(res, "--no-valid")
    res = run_cli("preprocess", "lists", src, "-o", tmp_path / "a", "--min-purchases", "2")
    assert_one_line_error(res, "do not apply")


def _edit(path, line_no, text):
    rows = path.read_text().splitlines()
    rows[line_no - 1] = text
    path.write_text("\n".join(rows) + "\n")


def _append(path, text):
    path.write_text(path.read_text() + text)


BAD_INPUTS = {
    "bad token": (lambda s, tr, te: _edit(s / "buy" / "train.txt", 3, "2\t5\tx7"),
                  (), ("buy/train.txt: line 3", "non-negative integer ids", "'x7'")),
    "negative id": (lambda s, tr, te: _edit(s / "cart" / "train.txt", 2, "1\t-4"),
                    (), ("cart/train.txt: line 2", "'-4'")),
    "huge id": (lambda s, tr, te: _edit(s / "view" / "train.txt", 5, "4\t123456789012"),
                (), ("view/train.txt: line 5", "too large")),
    "not utf-8": (lambda s, tr, te: (s / "view" / "train.txt").write_bytes(b"0\t1\n1\t\xff2\n"),
                  (), ("view/train.txt: line 2",)),
    "empty file": (lambda s, tr, te: (s / "cart" / "train.txt").write_text("\n\n"),
                   (), ("cart/train.txt: empty file",)),
    "users only": (lambda s, tr, te: (s / "cart" / "train.txt").write_text("0\n1\n"),
                   (), ("cart/train.txt: no (user, item) entries",)),
    "two test items": (lambda s, tr, te: _edit(s / "buy" / "test.txt", 4, f"3\t{te[3]}\t{te[4]}"),
                       (), ("buy/test.txt: line 4", "one item per user", "3 ids")),
    "second test line": (lambda s, tr, te: _append(s / "buy" / "test.txt", f"5\t{te[6]}\n"),
                         (), ("buy/test.txt: line 31", "user 5 has a second test item", "line 6")),
    "test is a purchase": (lambda s, tr, te: _edit(s / "buy" / "test.txt", 8, f"7\t{tr['buy'][7][1]}"),
                           (), ("buy/test.txt: line 8", "is also a training purchase", "buy/train.txt")),
    "test user out of range": (lambda s, tr, te: _append(s / "buy" / "test.txt", "30\t1\n"),
                               (), ("buy/test.txt: line 31", "user 30 is outside the 30 users",
                                    "training files")),
    "test item out of range": (lambda s, tr, te: _edit(s / "buy" / "test.txt", 2, "1\t150"),
                               (), ("buy/test.txt: line 2", "item 150 is outside the 150 items")),
    "no test file": (lambda s, tr, te: (s / "buy" / "test.txt").unlink(),
                     (), ("buy/test.txt: no such file", "test split of the target")),
    "target moved": (lambda s, tr, te: None, ("--behaviors", "view,buy,cart"),
                     ("puts 'cart' last", "'buy' is the target")),
    "target left out": (lambda s, tr, te: None, ("--behaviors", "view,cart"),
                        ("leaves out 'buy'", "'buy' is the target")),
    "unknown behavior": (lambda s, tr, te: None, ("--behaviors", "view,fav,buy"),
                         ("no file fav/train.txt",)),
    "unknown names": (lambda s, tr, te: (s / "view").rename(s / "glance"), (),
                      ("cannot tell the order", "pass --behaviors")),
    "both layouts": (lambda s, tr, te: (s / "train.txt").write_text("0 1\n"), (),
                     ("holds both train.txt", "keep one layout")),
    "one-based ids": (lambda s, tr, te: [(s / b / "train.txt").write_text("1\t1\t2\n2\t3\n")
                                         for b in BEHAVIORS], (), ("0-based ids",)),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_mbcgcn_input_is_one_clear_error(tmp_path, case):
    train, test = make_split()
    src = write_mbcgcn(tmp_path / "t", train, test)
    if case == "one-based ids":
        (src / "buy" / "test.txt").write_text("1\t3\n")
    change, args, fragments = BAD_INPUTS[case]
    change(src, train, test)
    res = run_cli("preprocess", "lists", src, "-o", tmp_path / "out", *args)
    assert_one_line_error(res, *fragments)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_validation_file_checks(tmp_path):
    train, test = make_split()
    src = write_mbcgcn(tmp_path / "t", train, test, valid={0: train["buy"][0][0]})
    res = run_cli("preprocess", "lists", src, "-o", tmp_path / "o")
    assert_one_line_error(res, "buy/validation.txt: line 1", "is also a training purchase")
    (src / "buy" / "validation.txt").write_text(f"0\t{test[0]}\n")
    res = run_cli("preprocess", "lists", src, "-o", tmp_path / "o")
    assert_one_line_error(res, "buy/validation.txt: line 1", "is also the user's test pair")


@pytest.mark.parametrize("args, fragments", [
    (("--behaviors", "pv,cart"), ("puts 'cart' last", "cart.txt is an auxiliary behavior's file")),
    (("--behaviors", "pv,fav"), ("puts 'fav' last, an auxiliary behavior's name", "train.txt")),
    (("--behaviors", "pv,fav,buy"), ("no file fav.txt", "found auxiliary files: cart.txt, pv.txt")),
])
def test_ghcf_behaviors_may_not_change_the_target(tmp_path, args, fragments):
    train, test = make_split()
    src = write_ghcf(tmp_path / "gh", train, test)
    res = run_cli("preprocess", "lists", src, "-o", tmp_path / "o", *args)
    assert_one_line_error(res, *fragments)


def test_ghcf_unknown_auxiliary_names_need_behaviors(tmp_path):
    train, test = make_split()
    src = write_ghcf(tmp_path / "gh", train, test)
    (src / "pv.txt").rename(src / "tap.txt")
    res = run_cli("preprocess", "lists", src, "-o", tmp_path / "o")
    assert_one_line_error(res, "cannot tell the behaviors of cart.txt, tap.txt", "pass --behaviors")
    run_cli_ok("preprocess", "lists", src, "-o", tmp_path / "o", "-q", "--behaviors", "tap,cart,buy")
    ds = load_dataset(tmp_path / "o")
    assert ds.behaviors == ["tap", "cart", "buy"] and edges(ds, "tap") == pair_set(train["view"])


def test_info_and_help_name_the_source(tmp_path):
    train, test = make_split()
    src = write_mbcgcn(tmp_path / "t", train, test)
    run_cli_ok("preprocess", "lists", src, "-o", tmp_path / "a", "-q")
    info = json.loads(run_cli_ok("info", tmp_path / "a", "--json").stdout)
    assert info["source"] == "lists" and info["options"]["stats"]["test_pairs_in_auxiliary"]["of"] == 30
    text = " ".join(run_cli_ok("preprocess", "--help").stdout.split())
    assert "lists" in text and "--held-out-auxiliary" in text and "default: auto" in text


def test_a_validation_file_beside_another_behavior_is_not_taken_silently(tmp_path):
    train, test = make_split()
    src = write_mbcgcn(tmp_path / "t", train, test)
    (src / "cart" / "valid.txt").write_text("0\t1\n")
    res = run_cli("preprocess", "lists", src, "-o", tmp_path / "o")
    assert_one_line_error(res, "only cart/ holds a validation file", "'buy' is the target")


def test_repeated_entries_and_users_on_several_lines_are_one_edge(tmp_path):
    train, test = make_split()
    src = write_mbcgcn(tmp_path / "t", train, test)
    first = train["cart"][3][0]
    _append(src / "cart" / "train.txt", f"\n3\t{first}\t{first}\n\n29\t{first}\n")
    run_cli_ok("preprocess", "lists", src, "-o", tmp_path / "o", "-q", "--no-valid")
    ds = load_dataset(tmp_path / "o")
    assert edges(ds, "cart") == pair_set(train["cart"]) | {(29, first)}
    assert ds.options["stats"]["duplicate_entries"] == 2 - (first in train["cart"][29])
    assert ds.options["stats"]["published_train_edges"] == sum(len(pair_set(train[b])) for b in BEHAVIORS) + (
        first not in train["cart"][29])


def test_auxiliary_holdouts_become_training_edges_of_their_behavior(tmp_path):
    train, test = make_split()
    src = write_mbcgcn(tmp_path / "tmall", train, test, aux_tests=False)
    holdout = {"view": {u: [(test[u] + 1) % 150] for u in range(0, 30, 2)},  # new pairs
               "cart": {u: [train["view"][u][0]] for u in range(0, 30, 3)}}  # some already viewed
    holdout["cart"][5] = [test[5]]  # a cart holdout may be the user's test purchase
    for b, adj in holdout.items():
        (src / b / "test.txt").write_text(lines(adj))
    run_cli_ok("preprocess", "lists", src, "-o", tmp_path / "plain", "-q", "--no-valid")
    run_cli_ok("preprocess", "lists", src, "-o", tmp_path / "with", "-q", "--no-valid", "--auxiliary-holdouts")
    plain, ds = load_dataset(tmp_path / "plain"), load_dataset(tmp_path / "with")
    for b in ("view", "cart"):
        assert edges(plain, b) == pair_set(train[b])
        assert edges(ds, b) == pair_set(train[b]) | pair_set(holdout[b]), b
    assert edges(ds, "buy") == pair_set(train["buy"])
    np.testing.assert_array_equal(ds.test, plain.test)
    stats = ds.options["stats"]
    assert stats["auxiliary_holdouts"] == {"view": 15, "cart": 11} and ds.options["auxiliary_holdouts"] is True
    assert stats["files"][-2:] == ["view/test.txt", "cart/test.txt"]
    assert (5, test[5]) in edges(ds, "cart") and stats["test_pairs_in_auxiliary"]["by_behavior"]["cart"] >= 1


def test_auxiliary_holdouts_refusals(tmp_path):
    train, test = make_split()
    src = write_mbcgcn(tmp_path / "tmall", train, test)  # holdouts with an item id out of range
    res = run_cli("preprocess", "lists", src, "-o", tmp_path / "a", "--auxiliary-holdouts")
    assert_one_line_error(res, "view/test.txt: line 1: item 99999 is outside the 150 items")
    assert not (tmp_path / "a").exists()
    bare = write_mbcgcn(tmp_path / "bare", train, test, aux_tests=False)
    assert_one_line_error(run_cli("preprocess", "lists", bare, "-o", tmp_path / "b", "--auxiliary-holdouts"),
                          "no auxiliary behavior has a test.txt")
    gh = write_ghcf(tmp_path / "gh", train, test)
    assert_one_line_error(run_cli("preprocess", "lists", gh, "-o", tmp_path / "c", "--auxiliary-holdouts"),
                          "GHCF's layout has no per-behavior holdouts")
    assert_one_line_error(run_cli("preprocess", "csv", gh / "test.txt", "--behaviors", "view,buy", "-o",
                                  tmp_path / "d", "--auxiliary-holdouts"), "applies to the lists source only")
