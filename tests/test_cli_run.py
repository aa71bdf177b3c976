"""`cml evaluate`, `cml export-embeddings` and `cml recommend` on a trained tiny run."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cml_dgl_cli.main import cli
from cml_dgl.data.dataset import write_dataset
from cml_dgl.runs import load_run
from conftest import make_tiny_dataset


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    write_dataset(make_tiny_dataset(n_users=30, n_items=50, seed=4), base / "ds")
    res = CliRunner().invoke(cli, ["train", str(base / "ds"), "-o", str(base / "run"), "--epochs", "2",
                                   "--backend", "torch", "--quiet", "--set", "batch_size=32",
                                   "--set", "meta_batch=8"])
    assert res.exit_code == 0, res.output
    return base / "run"


def invoke(*args, expect=0):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == expect, res.output
    return res


def test_evaluate_json_protocols(run_dir):
    one = json.loads(invoke("evaluate", run_dir, "--json").output)
    assert one["protocol"] == "sampled" and one["split"] == "test" and one["tie_rule"] == "expected"
    assert {"hr@10", "ndcg@10", "recall@10", "mrr", "hr@40"} <= set(one["metrics"])
    assert one["checkpoint"].endswith("best.pt") and one["n_users"] == 30
    both = json.loads(invoke("evaluate", run_dir, "--protocol", "both", "-k", "5,10", "--json", "-q",
                             "--checkpoint", "last", "--split", "valid").output)
    assert [r["protocol"] for r in both] == ["sampled", "full"]
    assert set(both[1]["metrics"]) == {"hr@5", "ndcg@5", "recall@5", "hr@10", "ndcg@10", "recall@10", "mrr"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert one["metrics"]["ndcg@10"] == pytest.approx(summary["test_at_best"]["ndcg@10"], abs=1e-6)


@pytest.mark.parametrize("fmt", ["npy", "csv", "parquet"])
def test_export_reproduces_model_scores(run_dir, tmp_path, fmt):
    out = tmp_path / "emb"
    invoke("export-embeddings", run_dir, "-o", out, "--format", fmt, "--per-behavior")
    manifest = json.loads((out / "manifest.json").read_text())
    run = load_run(run_dir)
    user, item = run.embeddings()
    if fmt == "npy":
        U, I = np.load(out / "users.npy"), np.load(out / "items.npy")
        uid, iid = np.load(out / "users_ids.npy"), np.load(out / "items_ids.npy")
        W = np.load(out / "meta_weights.npy")
    else:
        read = pd.read_csv if fmt == "csv" else pd.read_parquet
        du, di = read(out / f"users.{fmt}"), read(out / f"items.{fmt}")
        U, I = du.drop(columns="id").to_numpy(np.float32), di.drop(columns="id").to_numpy(np.float32)
        uid, iid = du["id"].to_numpy(), di["id"].astype(str).to_numpy()
        W = read(out / f"meta_weights.{fmt}").drop(columns="id").to_numpy()
    assert U.dtype == np.float32 and U.shape == (30, manifest["dim"])
    np.testing.assert_array_equal(uid, run.ds.user_ids)
    np.testing.assert_array_equal(iid.astype(str), run.ds.item_ids.astype(str))
    np.testing.assert_allclose(U @ I.T, (user @ item.T).numpy(), rtol=1e-5, atol=1e-5)
    assert manifest["meta_weight_behaviors"] == run.ds.behaviors[:-1]
    assert W.shape == (30, len(run.ds.behaviors) - 1) and ((W > 0) & (W < 1)).all()
    assert set(manifest["files"]) <= {p.name for p in out.iterdir()}


def test_recommend(run_dir):
    run = load_run(run_dir)
    raw = str(run.ds.user_ids[3])
    recs = json.loads(invoke("recommend", run_dir, "--user", raw, "-k", "5", "--json").output)
    assert len(recs) == 5 and [r["rank"] for r in recs] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in recs]
    assert scores == sorted(scores, reverse=True)
    bu, bi = run.ds.edges(run.ds.n_behaviors - 1)
    bought = {str(run.ds.item_ids[i]) for i in bi[bu == 3]}
    assert not bought & {str(r["item"]) for r in recs}
    s = run.scorer().score_users(torch.tensor([3]))[0].numpy()  # the whole score: <Z_u, Z_i> + item bias
    s[list(bi[bu == 3])] = -np.inf
    assert {str(run.ds.item_ids[i]) for i in np.argsort(-s)[:5]} == {str(r["item"]) for r in recs}
    allrec = json.loads(invoke("recommend", run_dir, "--user", raw, "-k", "50", "--json",
                               "--include-purchased").output)
    assert bought <= {str(r["item"]) for r in allrec}
    res = invoke("recommend", run_dir, "--user", "no-such-user", expect=2)
    assert "unknown user" in res.output


def test_bad_inputs_exit_2(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "not a run directory" in invoke("evaluate", tmp_path / "empty", expect=2).output
    assert "checkpoint not found" in invoke("evaluate", run_dir, "--checkpoint", tmp_path / "x.pt", expect=2).output
    write_dataset(make_tiny_dataset(n_users=31, n_items=50, seed=4), tmp_path / "other")
    res = invoke("evaluate", run_dir, "--dataset", tmp_path / "other", expect=2)
    assert "another dataset" in res.output and "\n" == res.output[-1] and res.output.count("\n") == 1
    assert invoke("evaluate", run_dir, "-k", "0", expect=2).exit_code == 2
    assert invoke("export-embeddings", run_dir, "-o", tmp_path / "e", "--format", "xml", expect=2)
    assert "-k must be positive" in invoke("recommend", run_dir, "--user", "100", "-k", "0", expect=2).output
    assert not (tmp_path / "e").exists()


def test_report_writes_real_images(run_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "rep"
    res = invoke("report", run_dir, "--out", out)
    for name in ("losses.png", "metrics.png", "meta_weights.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 200
            assert len(im.convert("L").getcolors(maxcolors=1 << 16) or []) > 10, f"{name} is blank"
    text = (out / "report.md").read_text()
    assert "best" in text.lower() and "metrics.png" in text
    assert str(out / "report.md") in res.output
