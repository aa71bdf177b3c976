"""The embedded demo end to end, on a smaller instance than `make demo`."""

import json

from click.testing import CliRunner

from cml_dgl_cli.main import cli


def test_demo_runs_the_pipeline_and_cml_wins(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--users", "800", "--items", "1000",
                                   "--epochs", "15"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    test = summary["test"]
    assert set(test) == {"cml", "cml-paper", "mf", "pop"}
    cml = test["cml"]["sampled"]["ndcg@10"]
    assert cml > test["mf"]["sampled"]["ndcg@10"], test
    assert cml > test["pop"]["sampled"]["ndcg@10"], test
    assert test["cml"]["full"]["ndcg@10"] > test["pop"]["full"]["ndcg@10"], test
    for key in ("losses", "metrics", "meta_weights", "report"):
        assert (out / "run-cml" / f"{key}.png" if key != "report" else out / "run-cml" / "report.md").is_file()
    assert (out / "embeddings" / "manifest.json").is_file()
    assert (out / "UserBehavior.csv").is_file() and (out / "dataset" / "meta.json").is_file()
    assert "report.md" in res.output and "ndcg" in res.output.lower()
    again = CliRunner().invoke(cli, ["demo", "--out", str(out), "--users", "800"])
    assert again.exit_code == 2 and "--overwrite" in again.output
