"""bench/quality_table.py: the config layers of each row (no training here)."""

from __future__ import annotations

import argparse

from bench import quality_table
from cml_dgl.train import config


def _bench(tmp_path, trials=20, epochs=None):
    return quality_table.Bench(argparse.Namespace(out=str(tmp_path), threads=1, trials=trials, epochs=epochs))


def _presets(layers):
    return [layers[i + 1] for i, a in enumerate(layers) if a == "--preset"]


def test_cml_rows_use_the_datasets_presets_and_the_references_the_authors_hyperparameters(tmp_path):
    bench = _bench(tmp_path)
    assert _presets(bench.base_layers("tmall-mbcgcn", "cml")) == ["tmall", "mbcgcn"]
    assert _presets(bench.base_layers("retailrocket", "cml")) == ["retailrocket"]
    assert bench.base_layers("retailrocket", "itemknn") == []
    for name, ref in (("ijcai15", "cml@paper"), ("tmall-mbcgcn", "cml@official")):
        layers = bench.tuned(name, ref)  # references are never tuned: no subprocess here
        assert layers[:2] == ["--model", "cml"]
        cfg = config.resolve(presets=_presets(layers))
        assert cfg["dim"] == 16 and cfg["propagation"] == "nonlinear" and cfg["history"] == "none"
    assert config.resolve(presets=_presets(bench.tuned("ijcai15", "cml@official")))["activation"] == "sigmoid"


def test_untuned_rows_and_the_epoch_cap(tmp_path):
    bench = _bench(tmp_path, trials=0, epochs=3)
    assert bench.tuned("retailrocket", "mf") == ["--set", "epochs=3", "--model", "mf"]
    assert bench.tuned("ijcai15", "cml@paper")[-2:] == ["--set", "epochs=3"]
    assert bench.tuned("retailrocket", "cascading-rank")[-2:] == ["--model", "cascading-rank"]


def test_every_model_of_a_dataset_is_selected_on_the_same_ranking(tmp_path):
    """On the MB-CGCN lists every model's epochs and trials are chosen on the full ranking (the
    protocol reported there), not only CML's (whose preset says so); the CML splits keep the
    stored candidates."""
    bench = _bench(tmp_path)
    for model in ("mf", "lightgcn-merged", "cml", "cml@official"):
        layers = bench.base_layers("tmall-mbcgcn", model)
        sets = [layers[i + 1] for i, a in enumerate(layers) if a == "--set"]
        cfg = config.resolve(presets=_presets(layers), overrides=sets)
        assert cfg["monitor_protocol"] == "full", model
    assert "monitor_protocol=full" not in bench.base_layers("retailrocket", "mf")
    assert bench.tuned("tmall-mbcgcn", "history")[-2:] == ["--model", "history"]


def test_training_free_models_with_a_search_space_are_tuned_like_the_others(tmp_path, monkeypatch):
    """ItemKNN's neighbours and shrinkage and CascadingRank's restart weights are chosen by the
    same ``cml tune`` budget as the trained models (on validation); popularity and history have
    nothing to tune."""
    bench, calls = _bench(tmp_path, trials=7), []
    monkeypatch.setattr(bench, "cml", lambda *args: calls.append([str(a) for a in args]) or "")
    for model in ("itemknn", "cascading-rank"):
        layers = bench.tuned("retailrocket", model)
        assert layers == ["--config", tmp_path.resolve() / "tune" / "retailrocket" / model / "best.yaml"]
        assert calls[-1][:6] == ["tune", str(bench.dataset("retailrocket", "honest")), "--model", model,
                                 "--trials", "7"]
    n = len(calls)
    for model in ("pop", "pop-target", "history"):
        assert bench.tuned("retailrocket", model)[-2:] == ["--model", model]
    assert len(calls) == n


def test_a_finished_study_is_still_checked_by_cml_tune_once_per_table(tmp_path, monkeypatch):
    """A study whose summary says its trials are done still goes through ``cml tune`` (which refuses
    a study of another search space, dataset or base config), once per model and table run."""
    bench, calls = _bench(tmp_path, trials=3), []
    monkeypatch.setattr(bench, "cml", lambda *args: calls.append([str(a) for a in args]) or "")
    study = tmp_path / "tune" / "retailrocket" / "mf"
    study.mkdir(parents=True)
    (study / "summary.json").write_text('{"trials": {"complete": 3}}')
    for _ in range(3):
        assert bench.tuned("retailrocket", "mf")[:2] == ["--config", study.resolve() / "best.yaml"]
    assert [c[:2] for c in calls if c[0] == "tune"] == [["tune", str(bench.dataset("retailrocket", "honest"))]]
