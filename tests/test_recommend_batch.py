"""Batch recommendations (issue 14, point 10): `recommend_topk` against a brute-force ranking (ties
by item id, exclusions, chunking), and `cml recommend` for several users, a file of users or all
of them, written as CSV, JSON lines or Parquet with raw ids, ranks and full-precision scores."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cml_dgl.data.dataset import write_dataset
from cml_dgl.errors import CmlError
from cml_dgl.models.topk import recommend_topk
from cml_dgl.runs import load_run
from conftest import assert_one_line_error, make_tiny_dataset, run_cli, run_cli_ok


def brute_force(user, item, users, k, exclude):
    """Every item's score, sorted by (-score, item id), excluded items dropped."""
    items, scores = [], []
    dense = exclude.toarray() if exclude is not None else np.zeros((len(user), len(item)), bool)
    for u in users:
        s = (item @ user[u]).numpy()  # exact: the test embeddings are small integers
        order = [i for i in np.lexsort((np.arange(len(s)), -s)) if not dense[u, i]][:k]
        items.append(order + [-1] * (min(k, len(item)) - len(order)))
        scores.append([float(s[i]) for i in order] + [float("-inf")] * (min(k, len(item)) - len(order)))
    return np.array(items), np.array(scores)


@pytest.mark.parametrize("seed", range(4))
def test_recommend_topk_equals_a_brute_force_ranking_with_ties_and_exclusions(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, d = 37, 53, 4
    user = torch.as_tensor(rng.integers(-2, 3, (n_users, d)), dtype=torch.float32)  # small ints: many ties
    item = torch.as_tensor(rng.integers(-2, 3, (n_items, d)), dtype=torch.float32)
    item[40:] = item[3]  # cold items share one embedding
    mask = rng.random((n_users, n_items)) < 0.3
    mask[5, :] = True  # a user with nothing left to recommend
    mask[6, 2:] = True  # and one with two items
    exclude = sp.csr_matrix(mask)
    users = rng.permutation(n_users)[:30]
    for k in (1, 7, 60):
        want_items, want_scores = brute_force(user, item, users, k, exclude)
        for chunk in (1, 4, None):
            items, scores = recommend_topk(user, item, users, k, exclude=exclude, chunk=chunk)
            np.testing.assert_array_equal(items.numpy(), want_items)
            np.testing.assert_array_equal(scores.numpy(), want_scores)
    torch_csr = torch.sparse_csr_tensor(torch.as_tensor(exclude.indptr), torch.as_tensor(exclude.indices),
                                        torch.ones(exclude.nnz), size=exclude.shape, check_invariants=True)
    a = recommend_topk(user, item, users, 5, exclude=torch_csr)
    b = recommend_topk(user, item, users, 5, exclude=exclude)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    items, _ = recommend_topk(user, item, users, 5)
    np.testing.assert_array_equal(items.numpy(), brute_force(user, item, users, 5, None)[0])


def test_recommend_topk_refuses_diverged_embeddings_and_bad_k():
    user, item = torch.ones(3, 2), torch.ones(4, 2)
    item[1, 0] = float("nan")
    with pytest.raises(CmlError, match="NaN or infinite"):
        recommend_topk(user, item, [0], 2)
    with pytest.raises(CmlError, match="-k must be positive"):
        recommend_topk(user, torch.ones(4, 2), [0], 0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("rec")
    write_dataset(make_tiny_dataset(n_users=30, n_items=50, seed=4), base / "ds")  # users 100.., items "i0"..
    run_cli_ok("train", base / "ds", "-o", base / "run", "--epochs", "1", "--model", "mf", "--backend", "torch",
               "--quiet", "--set", "batch_size=64")
    return base / "run"


def expected(run_dir, k=4):
    """Per raw user: [(item, score)] from recommend_topk on the run's embeddings (the float32
    scores as Python floats, to compare the written ones with to the last bit)."""
    run = load_run(run_dir)
    user, item = run.embeddings()
    items, scores = recommend_topk(user, item, np.arange(run.ds.n_users), k,
                                   exclude=run.ds.csr(run.ds.n_behaviors - 1))
    return {int(run.ds.user_ids[u]): [(str(run.ds.item_ids[i]), float(s)) for i, s in zip(items[u], scores[u])
                                      if i >= 0] for u in range(run.ds.n_users)}


def rows_of(df):
    out = {}
    for r in df.itertuples():
        out.setdefault(int(r.user), []).append((str(r.item), float(r.score), int(r.rank)))
    return out


def test_several_users_are_all_answered(run_dir):
    """Today's behaviour was: --user 100 --user 101 answered 101 only."""
    res = run_cli_ok("recommend", run_dir, "--user", "100", "--user", "107", "-k", "4", "--json")
    recs = json.loads(res.stdout)
    want = expected(run_dir)
    assert [(r["user"], r["rank"]) for r in recs] == [(100, n) for n in range(1, 5)] + [(107, n) for n in range(1, 5)]
    assert [(r["item"], r["score"]) for r in recs] == want[100] + want[107]
    table = run_cli_ok("recommend", run_dir, "--user", "100", "--user", "107", "-k", "4").stdout.splitlines()
    assert len(table) == 8 and table[0].split()[:3] == ["100", "1", want[100][0][0]]
    one = run_cli_ok("recommend", run_dir, "--user", "107", "-k", "4").stdout.splitlines()
    assert one[0].split() == ["1", want[107][0][0], f"{want[107][0][1]:.4f}"], "one user: the table as before"


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_all_users_to_a_file_with_raw_ids_ranks_and_exact_scores(run_dir, tmp_path, fmt):
    out = tmp_path / f"recs.{fmt}"
    res = run_cli_ok("recommend", run_dir, "--all-users", "-k", "4", "-o", out)
    assert f"for 30 users to {out}" in res.stdout
    exact = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}  # pandas 3: default
    df = {"csv": lambda p: pd.read_csv(p, **exact), "parquet": pd.read_parquet,
          "jsonl": lambda p: pd.read_json(p, lines=True, dtype=False, precise_float=True)}[fmt](out)
    assert list(df.columns) == ["user", "rank", "item", "score"]
    got, want = rows_of(df), expected(run_dir)
    assert sorted(got) == sorted(want)
    for u in want:
        assert [(i, s) for i, s, _ in got[u]] == want[u], u  # scores equal to the last bit
        assert [r for *_, r in got[u]] == list(range(1, len(want[u]) + 1))


def test_a_users_file_keeps_its_order_once_per_user_and_excludes_purchases(run_dir, tmp_path):
    (tmp_path / "users.txt").write_text("\ufeff105\n\n 100 \n105\n129\n")
    out = tmp_path / "r.csv"
    run_cli_ok("recommend", run_dir, "--users", tmp_path / "users.txt", "-k", "40", "-o", out)
    df = pd.read_csv(out)
    assert list(dict.fromkeys(df.user)) == [105, 100, 129] and (df.groupby("user").size() <= 40).all()
    run = load_run(run_dir)
    bu, bi = run.ds.edges(run.ds.n_behaviors - 1)
    for u in (105, 100, 129):
        internal = int(np.flatnonzero(run.ds.user_ids == u)[0])
        bought = {str(run.ds.item_ids[i]) for i in bi[bu == internal]}
        assert bought and not bought & set(df[df.user == u].item.astype(str))
        assert len(df[df.user == u]) == min(40, 50 - len(bought))
    run_cli_ok("recommend", run_dir, "--users", tmp_path / "users.txt", "-k", "50", "-o", out, "--overwrite",
               "--include-purchased")
    assert (pd.read_csv(out).groupby("user").size() == 50).all()


def test_bad_user_lists_and_outputs_are_refused_before_writing(run_dir, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("100\n101\nnobody\n102\nghost\n")
    out = tmp_path / "r.csv"
    assert_one_line_error(run_cli("recommend", run_dir, "--users", users, "-o", out),
                          f"{users}: line 3: unknown user 'nobody'", "(2 unknown users in all)")
    assert not out.exists()
    assert_one_line_error(run_cli("recommend", run_dir, "--user", "100", "--user", "x1"), "--user: unknown user 'x1'")
    users.write_bytes(b"100\n\xff\xfe\n")
    assert_one_line_error(run_cli("recommend", run_dir, "--users", users), "not a text file (byte 4 is not UTF-8)")
    users.write_text("\n \n")
    assert_one_line_error(run_cli("recommend", run_dir, "--users", users), "no user ids")
    out.write_text("keep me")
    assert_one_line_error(run_cli("recommend", run_dir, "--all-users", "-o", out), "exists (pass --overwrite")
    assert out.read_text() == "keep me"
    assert_one_line_error(run_cli("recommend", run_dir, "--all-users", "-o", tmp_path / "no" / "r.csv"),
                          "no such folder")


@pytest.mark.parametrize("args", [[], ["--user", "100", "--all-users"], ["--all-users", "--format", "parquet"],
                                  ["--all-users", "-o", "r.txt"], ["--all-users", "--json", "--format", "csv"],
                                  ["--all-users", "-o", "r.csv", "--format", "table"]])
def test_usage_errors(run_dir, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    res = run_cli("recommend", run_dir, *args)
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_csv_and_jsonl_on_stdout(run_dir):
    csv = run_cli_ok("recommend", run_dir, "--user", "100", "--format", "csv", "-k", "2").stdout.splitlines()
    jsonl = run_cli_ok("recommend", run_dir, "--user", "100", "--format", "jsonl", "-k", "2").stdout.splitlines()
    assert csv[0] == "user,rank,item,score" and len(csv) == 3
    rows = [json.loads(x) for x in jsonl]
    assert [float(c.split(",")[3]) for c in csv[1:]] == [r["score"] for r in rows]
