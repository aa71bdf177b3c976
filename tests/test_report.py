"""write_report: real PNG figures, a Markdown summary that picks the best epoch on validation only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cml_dgl.errors import CmlError
from cml_dgl.report import best_epoch, read_metrics, write_report

mpimg = pytest.importorskip("matplotlib.image", reason="reports need matplotlib (extra 'report')")


def _write_metrics(run: Path, lines: list) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def _epochs(n: int = 6, with_valid: bool = True, with_test: bool = True) -> list[dict]:
    # validation peaks at epoch 4; test keeps rising (so test-based selection would pick epoch 6)
    valid = [0.10, 0.15, 0.19, 0.24, 0.21, 0.20]
    out = []
    for e in range(1, n + 1):
        rec = {"epoch": e, "seconds": 2.0 + 0.5 * e,
               "losses": {"bpr": 1.0 / e, "contrastive": 4.0 - 0.3 * e, "meta": 0.5 + 0.01 * e}}
        if with_valid:
            rec["valid"] = {"hr@10": 2 * valid[e - 1], "ndcg@10": valid[e - 1]}
        if with_test:
            rec["test"] = {"hr@10": 0.08 * e, "ndcg@10": 0.04 * e}
        out.append(rec)
    return out


def _assert_real_png(path: Path) -> None:
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 150 and img.shape[1] > 200, img.shape
    assert float(img[..., :3].var()) > 0


def test_report_writes_figures_and_summary(tmp_path):
    run = tmp_path / "run"
    _write_metrics(run, _epochs())
    rng = np.random.default_rng(0)
    weights = {"pv": rng.beta(2, 5, 300), "fav": rng.beta(5, 2, 300), "cart": rng.random(300)}
    paths = write_report(run, meta_weights=weights)

    assert set(paths) == {"losses", "metrics", "meta_weights", "report"}
    for key in ("losses", "metrics", "meta_weights"):
        assert paths[key] == run / f"{key}.png"
        _assert_real_png(paths[key])
    md = paths["report"].read_text()
    assert "best epoch: 4" in md
    assert "ndcg@10 0.2400" in md  # the best epoch's validation metric
    assert "epochs: 6" in md
    assert f"{sum(2.0 + 0.5 * e for e in range(1, 7)):.1f} s" in md
    for name in ("losses.png", "metrics.png", "meta_weights.png"):
        assert f"]({name})" in md
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_report_to_other_dir_without_valid_or_weights(tmp_path):
    run, out = tmp_path / "run", tmp_path / "deep" / "out"
    _write_metrics(run, _epochs(3, with_valid=False))
    paths = write_report(run, out_dir=out)
    assert set(paths) == {"losses", "metrics", "report"}
    assert not (out / "meta_weights.png").exists() and not (run / "report.md").exists()
    _assert_real_png(out / "metrics.png")
    md = (out / "report.md").read_text()
    assert "none selected" in md and "no validation split" in md


def test_best_epoch_uses_validation_and_earliest_tie(tmp_path):
    recs = _epochs()
    recs[5]["valid"]["ndcg@10"] = 0.24  # ties epoch 4
    _write_metrics(tmp_path, recs)
    assert best_epoch(read_metrics(tmp_path / "metrics.jsonl")).epoch == 4


@pytest.mark.parametrize("bad, needle", [
    ("{not json", "not valid JSON"),
    ('{"epoch": "3", "seconds": 1.0, "losses": {}}', "'epoch'"),
    ('{"epoch": 3, "seconds": 1.0}', "'losses'"),
    ('{"epoch": 3, "seconds": 1.0, "losses": {"bpr": "x"}}', "losses['bpr']"),
    ("[1, 2]", "JSON object"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, needle):
    recs = _epochs(3)
    _write_metrics(tmp_path, [recs[0], recs[1], bad, recs[2]])
    with pytest.raises(CmlError) as err:
        write_report(tmp_path)
    msg = str(err.value)
    assert f"{tmp_path / 'metrics.jsonl'}:3:" in msg and needle in msg
    assert not (tmp_path / "losses.png").exists(), "nothing should be written on bad input"


def test_missing_or_empty_metrics(tmp_path):
    with pytest.raises(CmlError, match="metrics.jsonl: missing"):
        write_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("\n  \n")
    with pytest.raises(CmlError, match="metrics.jsonl: empty"):
        write_report(tmp_path)


def test_bad_meta_weights(tmp_path):
    _write_metrics(tmp_path, _epochs(2))
    with pytest.raises(CmlError, match=r"meta_weights\['fav'\].*NaN"):
        write_report(tmp_path, meta_weights={"pv": np.ones(4), "fav": np.array([0.1, np.nan, 0.2, 0.3])})
    with pytest.raises(CmlError, match=r"meta_weights\['fav'\].*3 users"):
        write_report(tmp_path, meta_weights={"pv": np.ones(4), "fav": np.ones(3)})


def test_constant_meta_weights_still_plot(tmp_path):
    _write_metrics(tmp_path, _epochs(2))
    paths = write_report(tmp_path, meta_weights={"pv": np.full(5, 0.5), "cart": np.linspace(0, 1, 5)})
    _assert_real_png(paths["meta_weights"])
