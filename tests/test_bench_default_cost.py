"""bench/default_cost.py: the configurations it times (no training here)."""

from __future__ import annotations

from bench import default_cost
from cml_dgl.train import config


def _sets(argv):
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


def _presets(argv):
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--preset"]


def test_a_varied_factor_is_the_default_with_one_key_changed_and_skipped_where_the_preset_has_it():
    default = config.resolve(presets=["ijcai15"])["aux_draws"]
    other = next(v for v in config.CHOICES["aux_draws"] if v != default)
    ij = default_cost.configurations("ijcai15", [f"aux_draws={other}"])
    assert list(ij) == ["before", "default", f"aux_draws={other}"]
    varied = ij[f"aux_draws={other}"]
    assert varied[:len(ij["default"])] == ij["default"]
    base = config.resolve(presets=_presets(varied))
    assert config.resolve(presets=_presets(varied), overrides=_sets(varied)) == {**base, "aux_draws": other}
    # the MB-CGCN lists' preset already selects on the full ranking: nothing to vary there
    assert list(default_cost.configurations("tmall-mbcgcn", ["monitor_protocol=full"])) == ["before", "default"]
    assert "monitor_protocol=full" in default_cost.configurations("ijcai15", ["monitor_protocol=full"])
