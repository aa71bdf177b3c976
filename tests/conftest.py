"""Shared fixtures: tiny synthetic datasets and the location of the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cml_dgl.data.dataset import Dataset, write_dataset

os.environ.setdefault("DGLBACKEND", "pytorch")


def shared_data_dir() -> Path:
    env = os.environ.get("CML_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    d = shared_data_dir()
    if not (d / "README.md").is_file():
        pytest.skip(f"shared data not found at {d} (set CML_SHARED_DATA to the folder holding "
                    "retailrocket/ and raw/)")
    return d


def make_tiny_dataset(n_users: int = 12, n_items: int = 20, behaviors=("view", "cart", "buy"),
                      seed: int = 0, density: float = 0.3) -> Dataset:
    """A small random dataset in the real format (every user has a test and a valid purchase)."""
    rng = np.random.default_rng(seed)
    K = len(behaviors)
    us, its, bs = [], [], []
    for k in range(K):
        mask = rng.random((n_users, n_items)) < density / (k + 1)
        u, i = np.nonzero(mask)
        us.append(u); its.append(i); bs.append(np.full(len(u), k))
    u = np.concatenate(us); i = np.concatenate(its); b = np.concatenate(bs)
    # every user gets at least 2 target purchases in train
    extra_u = np.repeat(np.arange(n_users), 2)
    extra_i = rng.integers(0, n_items, size=len(extra_u))
    u = np.concatenate([u, extra_u]); i = np.concatenate([i, extra_i]); b = np.concatenate([b, np.full(len(extra_u), K - 1)])
    key = np.unique(np.stack([b, u, i], 1), axis=0)
    b, u, i = key[:, 0], key[:, 1], key[:, 2]
    users = np.arange(n_users)
    test_items = rng.integers(0, n_items, size=n_users)
    valid_items = (test_items + 1) % n_items
    keep = ~(np.isin(u * n_items + i, users * n_items + test_items) | np.isin(u * n_items + i, users * n_items + valid_items))
    u, i, b = u[keep], i[keep], b[keep]
    n_neg = min(99, n_items - 2)
    negs = np.stack([rng.choice(np.setdiff1d(np.arange(n_items), [t, v]), n_neg, replace=False)
                     for t, v in zip(test_items, valid_items)])
    return Dataset(
        behaviors=list(behaviors), n_users=n_users, n_items=n_items,
        train_user=u.astype(np.int32), train_item=i.astype(np.int32), train_behavior=b.astype(np.int8),
        train_time=np.arange(len(u), dtype=np.int64),
        valid=np.stack([users, valid_items], 1), test=np.stack([users, test_items], 1),
        valid_negatives=negs, test_negatives=negs[:, ::-1].copy(),
        user_ids=np.arange(100, 100 + n_users), item_ids=np.array([f"i{j}" for j in range(n_items)]),
        source="synthetic-test", seed=seed,
    )


@pytest.fixture
def tiny_dataset() -> Dataset:
    return make_tiny_dataset()


def run_cli(*args, catch_exceptions: bool = True):
    """Invoke ``cml`` in-process, with stderr kept apart from stdout."""
    from cml_dgl_cli.main import cli

    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 keeps stderr apart already
        runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=catch_exceptions)


def write_published_split(folder: Path) -> None:
    """A minimal published split in the authors' layout (2 users, 4 items, view/cart/buy)."""
    import pickle

    import scipy.sparse as sp

    folder.mkdir()
    m = sp.csr_matrix(np.array([[0, 5, 6, 0], [7, 0, 0, 8]], dtype=np.int64))
    for name in ("view", "cart", "buy"):
        (folder / f"trn_{name}").write_bytes(pickle.dumps(m))
    (folder / "tst_int").write_bytes(pickle.dumps([3, None]))


def dense_adjacency(ds, behaviors) -> np.ndarray:
    """The 0/1 users x items matrix of the training edges of ``behaviors`` (indices), merged."""
    a = np.zeros((ds.n_users, ds.n_items))
    for k in behaviors:
        u, i = ds.edges(k)
        a[u, i] = 1.0
    return a


def tiny_mf_run(base: Path, epochs: int) -> Path:
    """``base/ds`` (a 20-user tiny dataset) and ``base/run``, an MF run of ``epochs`` on it; returns ``base``."""
    write_dataset(make_tiny_dataset(n_users=20, n_items=30, seed=2), base / "ds")
    run_cli_ok("train", base / "ds", "-o", base / "run", "--model", "mf", "--epochs", str(epochs), "--quiet",
               "--backend", "torch")
    return base


def run_cli_ok(*args):
    """``run_cli`` letting exceptions through, asserting exit code 0."""
    res = run_cli(*args, catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return res


def assert_one_line_error(res, *fragments: str) -> str:
    """Exit code 2 and a single ``error: ...`` line on stderr holding every fragment."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr, res.exception)
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)
    return err


def metrics_rows(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl without its timing fields (what determinism and resume compare)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
        r.pop("timings")
    return rows
