"""bench/vs_official.py reads what the authors' code prints and builds the inputs it needs."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import vs_official  # noqa: E402


def test_the_epoch_line_of_the_reference_code_is_parsed():
    ref = REPO.parent / "shared" / "reference" / "official-cml" / "main.py"
    if ref.is_file():
        assert '[EPOCHTIME] epoch {e} train {_T1-_T0:.2f} s test' in ref.read_text()
    text = ("noise\n[EPOCHTIME] epoch 0 train 97.16 s test 6.70 s HR 0.2275 NDCG 0.1197\n"
            "[EPOCHTIME] epoch 1 train 100.44 s test 6.57 s HR 0.2283 NDCG 0.1217\n")
    assert vs_official.EPOCHTIME.findall(text) == [("0", "97.16", "6.70"), ("1", "100.44", "6.57")]


def test_summaries_leave_out_the_first_epoch_of_runs_of_three_or_more():
    runs = [{"train_s": [9.0, 2.0, 4.0], "eval_s": [1.0, 1.0, 3.0], "command": "a"},
            {"train_s": [5.0, 6.0], "eval_s": [0.5, 0.5], "command": "a"}]
    s = vs_official.summarise(runs)
    assert s["epochs_timed"] == 4
    assert s["train_s"] == pytest.approx(4.5) and s["eval_s"] == pytest.approx(0.75)
    assert s["epoch_s"] == pytest.approx(6.0)  # median of 3, 7, 5.5, 6.5


def test_the_ijcai_meta_user_file_is_our_meta_user_rule(shared_data, tmp_path, monkeypatch):
    if not (shared_data / "ijcai15").is_dir():
        pytest.skip("no ijcai15/ in the shared data")
    monkeypatch.setenv("CML_SHARED_DATA", str(shared_data))
    root = vs_official.authors_data("ijcai15", tmp_path, seed=7)
    folder = root / "IJCAI_15"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["trn_buy", "trn_cart", "trn_click", "trn_fav", "tst_int", vs_official.META_FILE])
    with open(folder / vs_official.META_FILE, "rb") as fh:
        users = pickle.load(fh)
    from cml_dgl.data.dataset import load_dataset
    from cml_dgl.train.draws import default_meta_users

    ds = load_dataset(tmp_path / "ijcai15-novalid")
    want = default_meta_users(ds, np.random.default_rng(8))
    assert users.dtype == np.int64 and np.array_equal(users, want) and len(users) == 17_435
    assert not np.array_equal(users, np.sort(users)), "shuffled"
