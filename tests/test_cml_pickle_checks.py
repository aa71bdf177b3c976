"""Published splits checked (issue 14, point 6): a `cml-pickle` folder whose training matrices differ
in shape, whose `tst_int` has the wrong length, whose test pairs are also training purchases, or
read with `--behaviors` that move the target away from the purchases is a one-line error with no
dataset written (all four were accepted with exit 0 before)."""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from cml_dgl.data.dataset import load_dataset
from conftest import assert_one_line_error, run_cli, write_published_split


def preprocess(folder, out, *extra):
    return run_cli("preprocess", "cml-pickle", folder, "-o", out, "-q", "--negatives", "1", *extra)


def refused(res, out, *fragments):
    assert_one_line_error(res, *fragments)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_the_fixture_split_is_accepted(tmp_path):
    write_published_split(tmp_path / "split")
    res = preprocess(tmp_path / "split", tmp_path / "out")
    assert res.exit_code == 0, res.stderr
    assert load_dataset(tmp_path / "out").test.tolist() == [[0, 3]]


def test_training_matrices_of_different_shapes_are_refused(tmp_path):
    folder = tmp_path / "split"
    write_published_split(folder)
    wide = sp.csr_matrix(np.array([[0, 5, 6, 0, 0], [7, 0, 0, 8, 0]], dtype=np.int64))
    (folder / "trn_cart").write_bytes(pickle.dumps(wide))
    refused(preprocess(folder, tmp_path / "out"), tmp_path / "out",
            f"{folder}: the training matrices differ in shape (trn_view (2, 4), trn_cart (2, 5), trn_buy (2, 4))",
            "must be the same users x items")


@pytest.mark.parametrize("test", [[3], [3, None, None]])
def test_tst_int_of_the_wrong_length_is_refused(tmp_path, test):
    folder = tmp_path / "split"
    write_published_split(folder)
    (folder / "tst_int").write_bytes(pickle.dumps(test))
    refused(preprocess(folder, tmp_path / "out"), tmp_path / "out",
            f"{folder / 'tst_int'}: {len(test)} entries, but the trn_ matrices have 2 users",
            "one entry (None or the test item) per user")


def test_a_test_matrix_of_another_shape_is_refused(tmp_path):
    folder = tmp_path / "split"
    write_published_split(folder)
    (folder / "tst_int").unlink()
    (folder / "test_mat.pkl").write_bytes(pickle.dumps(sp.coo_matrix(([1.0], ([0], [3])), shape=(2, 3 + 3))))
    refused(preprocess(folder, tmp_path / "out"), tmp_path / "out",
            "test_mat.pkl: shape (2, 6) differs from the trn_ matrices' (2, 4)")


def test_a_test_pair_that_is_also_a_training_purchase_is_refused(tmp_path):
    folder = tmp_path / "split"
    write_published_split(folder)
    (folder / "tst_int").write_bytes(pickle.dumps([2, 3]))  # user 0 bought 2, user 1 bought 3
    out = tmp_path / "out"
    for extra in ([], ["--no-valid"]):
        refused(preprocess(folder, out, *extra), out,
                f"{folder}: 2 test pairs are also training purchases in trn_buy (first: user 0, item 2)",
                "holds its test purchases out of training")
    # in an auxiliary behavior only, the pair is fine (a purchase is often viewed first)
    view = sp.csr_matrix(np.array([[0, 5, 6, 9], [7, 0, 0, 8]], dtype=np.int64))
    (folder / "trn_view").write_bytes(pickle.dumps(view))
    (folder / "tst_int").write_bytes(pickle.dumps([3, None]))
    assert preprocess(folder, out).exit_code == 0


@pytest.mark.parametrize("behaviors, target", [("view,buy,cart", "cart"), ("view,cart", "cart"),
                                               ("buy,view", "view")])
def test_behaviors_that_move_the_target_off_the_purchases_are_refused(tmp_path, behaviors, target):
    folder = tmp_path / "split"
    write_published_split(folder)
    refused(preprocess(folder, tmp_path / "out", "--behaviors", behaviors), tmp_path / "out",
            f"--behaviors {behaviors} makes '{target}' the target, but this split's test items are "
            "purchases (trn_buy); list buy last")


def test_behaviors_may_still_choose_and_order_the_auxiliary_ones(tmp_path):
    folder = tmp_path / "split"
    write_published_split(folder)
    for behaviors in ("cart,view,buy", "view,buy"):
        out = tmp_path / behaviors.replace(",", "-")
        assert preprocess(folder, out, "--behaviors", behaviors).exit_code == 0
        assert load_dataset(out).behaviors == behaviors.split(",")
