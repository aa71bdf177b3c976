"""The Python API: the notebook example of docs/usage.md runs as written, and what it returns."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

import cml_dgl
from cml_dgl.errors import CmlError

USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def _example() -> str:
    block = USAGE.read_text().split("<!-- api-example:begin -->")[1].split("<!-- api-example:end -->")[0]
    return block.strip().removeprefix("```python").removesuffix("```")


def test_the_documented_notebook_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_example(), str(USAGE), "exec"), env)
    run, recs, ds = env["run"], env["recs"], env["ds"]
    assert "sampled {" in out.getvalue() and "full {" in out.getvalue()
    assert (tmp_path / "runs" / "toy-lgm" / "summary.json").is_file()
    assert json.loads((tmp_path / "runs" / "toy-lgm" / "run.json").read_text())["dataset"]
    assert (tmp_path / "runs" / "toy-lgm-embeddings" / "manifest.json").is_file()
    # recommendations: raw ids, 10 per user, ranked, no training purchase
    assert len(recs) == 1000 and list(recs.columns) == ["user", "rank", "item", "score"]
    assert set(recs["user"]) == set(ds.user_ids[:100].tolist())
    bought = {(ds.user_ids[u], ds.item_ids[i]) for u, i in zip(*ds.edges(ds.n_behaviors - 1))}
    assert not any((u, i) in bought for u, i in zip(recs["user"], recs["item"]))
    for _, g in recs.groupby("user"):
        assert g["rank"].tolist() == list(range(1, 11)) and g["score"].is_monotonic_decreasing
    # the same results as the CLI's evaluation path, and the last checkpoint opens too
    res = cml_dgl.evaluate(run, protocol="sampled", ks=[10])[0]
    assert res["metrics"]["hr@10"] > 0.15
    assert env["again"].checkpoint.name == "last.pt"


def test_recommend_names_an_unknown_user(tmp_path):
    from cml_dgl.data.dataset import write_dataset
    from tests.conftest import make_tiny_dataset

    write_dataset(make_tiny_dataset(), tmp_path / "ds")
    run = cml_dgl.fit(tmp_path / "ds", tmp_path / "run", model="pop")
    top = cml_dgl.recommend(run, [100, 101], k=3, include_purchased=True)
    assert top["user"].tolist() == [100] * 3 + [101] * 3
    assert np.all(np.diff(top["score"].to_numpy()[:3]) <= 0)
    with pytest.raises(CmlError, match="unknown user '7'"):
        cml_dgl.recommend(run, [100, 7])
