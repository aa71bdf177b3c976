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
