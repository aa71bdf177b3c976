"""Resource limits and degenerate sizes: no purchase left, a single user, zero epochs, and a
full-ranking evaluation too large for one score matrix (chunked)."""

import importlib
import json

import numpy as np
import pytest
import torch
import scipy.sparse as sp

from cml_dgl.data.dataset import load_dataset, write_dataset
from conftest import make_tiny_dataset
from conftest import run_cli as invoke, assert_one_line_error as one_line_error

ev = importlib.import_module("cml_dgl.eval.evaluate")  # the package re-exports a function of that name

SMALL = ["--backend", "torch", "--set", "n_layers=1", "--set", "batch_size=64", "--quiet"]


NO_BUY = "1,10,5,pv,1511544070\n1,11,5,cart,1511544071\n2,12,5,fav,1511544072\n2,10,5,pv,1511544073\n"


@pytest.mark.parametrize("opts,expected", [
    ([], "no user is left after the filters (min_purchases=3 on 'buy'"),
    (["--min-purchases", "0"], "no 'buy' (target) interaction is left after the filters"),
    (["--min-purchases", "0", "--min-user-interactions", "3"], "no user is left after the filters"),
])
def test_no_purchase_left_after_filtering_is_a_clear_error(tmp_path, opts, expected):
    src = tmp_path / "UserBehavior.csv"
    src.write_text(NO_BUY)
    out = tmp_path / "out"
    one_line_error(invoke("preprocess", "taobao", src, "-o", out, "-q", "--negatives", "1", *opts),
                   str(src), expected)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_purchases_removed_by_the_item_filter_leave_nothing(tmp_path):
    src = tmp_path / "ub.csv"
    src.write_text(NO_BUY + "3,99,5,buy,1511544074\n3,98,5,buy,1511544075\n3,97,5,buy,1511544076\n")
    out = tmp_path / "out"
    one_line_error(invoke("preprocess", "taobao", src, "-o", out, "-q", "--negatives", "1",
                          "--min-item-interactions", "2"), "no user is left after the filters")
    assert not out.exists()


def test_single_user_log_preprocesses_trains_and_evaluates(tmp_path):
    src = tmp_path / "one.csv"
    src.write_text("".join(f"7,{i},5,{b},{1511544000 + i}\n"
                           for i, b in enumerate(["pv", "buy", "buy", "buy", "cart", "pv", "fav", "buy"] * 2)))
    ds_dir = tmp_path / "ds"
    res = invoke("preprocess", "taobao", src, "-o", ds_dir, "-q", "--negatives", "3")
    assert res.exit_code == 0, res.stderr
    ds = load_dataset(ds_dir)
    assert ds.n_users == 1 and len(ds.test) == 1 and len(ds.valid) == 1
    for model in ("cml", "mf", "lightgcn", "pop"):
        run = tmp_path / f"run-{model}"
        res = invoke("train", ds_dir, "-o", run, "--model", model, "--epochs", "2", *SMALL)
        assert res.exit_code == 0, (model, res.output, res.stderr)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert rows and all(np.isfinite(list(r["valid"].values())).all() for r in rows)
        assert all(np.isfinite(v) for r in rows for v in r["losses"].values())
        res = invoke("evaluate", run, "--protocol", "both", "--json")
        assert res.exit_code == 0, res.stderr
        results = json.loads(res.stdout)  # the full protocol's progress bar is on stderr
        assert [r["n_users"] for r in results] == [1, 1]
        hr = [r["metrics"]["hr@40"] for r in results]
        assert hr == [1.0, 1.0], "one positive among 3 negatives (or 10 items) is always in the top 40"


@pytest.mark.parametrize("monitor", ["valid", "test"])
def test_zero_epochs_evaluates_the_initial_model_and_leaves_a_usable_run(tmp_path, monitor):
    ds_dir = tmp_path / "ds"
    write_dataset(make_tiny_dataset(n_users=10, n_items=25, seed=2), ds_dir)
    run = tmp_path / "run"
    res = invoke("train", ds_dir, "-o", run, "--epochs", "0", "--monitor", monitor, *SMALL)
    assert res.exit_code == 0, (res.output, res.stderr, res.exception)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0] and rows[0]["losses"] == {} and monitor in rows[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 0 and summary["best_epoch"] == 0
    assert ("test_at_best" in summary) == (monitor == "valid")
    res = invoke("evaluate", run, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.output)["n_users"] == 10
    # a zero-epoch run resumes into a longer one, keeping its epoch-0 line once
    res = invoke("train", "--resume", run, "--epochs", "2", "--quiet")
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]


def test_chunk_bound_for_a_million_users_by_four_million_items():
    budget = ev.DEFAULT_MAX_CHUNK_ELEMS
    rows = ev._chunk_rows(budget, 4_000_000)
    assert rows >= 1 and rows * 4_000_000 <= budget, "full protocol: at most 128 MiB of float32 scores"
    assert -(-1_000_000 // rows) * rows >= 1_000_000
    rows = ev._chunk_rows(budget, (99 + 1) * 64)
    assert rows * (99 + 1) * 64 <= budget, "sampled protocol gathers at most the budget"
    assert ev._chunk_rows(budget, 10 * budget) == 1, "one user's row when the catalogue alone exceeds it"


def test_full_ranking_never_builds_more_than_the_budget_and_matches_one_big_chunk(monkeypatch):
    rng = np.random.default_rng(0)
    n_users, n_items, d, budget = 120, 5000, 4, 12_000
    ue = torch.from_numpy(rng.integers(-2, 3, size=(n_users, d)).astype(np.float32))
    ie = torch.from_numpy(rng.integers(-2, 3, size=(n_items, d)).astype(np.float32))
    pairs = np.stack([np.arange(n_users), rng.integers(0, n_items, n_users)], 1)
    mask_u = rng.integers(0, n_users, 3000)
    mask_i = rng.integers(0, n_items, 3000)
    mask = sp.csr_matrix((np.ones(3000, np.float32), (mask_u, mask_i)), shape=(n_users, n_items))
    want = ev.evaluate_full((ue, ie), pairs, mask, (1, 10, 100), max_chunk_elems=n_users * n_items)

    sizes = []
    original = torch.Tensor.__matmul__

    def recording(a, b):
        out = original(a, b)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", recording)
    got = ev.evaluate_full((ue, ie), pairs, mask, (1, 10, 100), max_chunk_elems=budget)
    monkeypatch.undo()
    assert got == want
    assert len(sizes) == -(-n_users // (budget // n_items)) and max(sizes) <= budget
    for tiny in (1, n_items - 1, n_items + 1):
        assert ev.evaluate_full((ue, ie), pairs, mask, (1, 10, 100), max_chunk_elems=tiny) == want
