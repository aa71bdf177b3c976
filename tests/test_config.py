import pytest

from cml_dgl.errors import CmlError
from cml_dgl.train import config


def test_layers_apply_in_order(tmp_path):
    base = config.resolve()
    rr = config.resolve(presets=["retailrocket"])
    assert rr["meta_optimizer"] == "sgd" and rr["batch_size"] == 2048
    tm = config.resolve(presets=["tmall"])
    assert tm["batch_size"] == 8192 and tm["opt_max_lr"] == 0.05
    assert config.resolve(presets=["authors-tmall"])["opt_max_lr"] == 0.005
    f = tmp_path / "user.yaml"
    f.write_text("batch_size: 1024\nbeta: 0.01\n")
    cfg = config.resolve(presets=["tmall"], config_file=f, overrides=["beta=1e-3", "eval_ks=[10,20]"])
    assert cfg["batch_size"] == 1024, "the user file is over the preset"
    assert cfg["beta"] == pytest.approx(1e-3), "--set is over the file"
    assert cfg["eval_ks"] == [10, 20]
    assert base["activation"] == "prelu" and base["norm"] == "sym"
    off = config.resolve(presets=["authors-retailrocket", "official"])
    assert off["activation"] == "sigmoid" and off["norm"] == "none" and off["monitor"] == "test"
    assert off["meta_optimizer"] == "sgd", "official keeps the authors' hyperparameters"


@pytest.mark.parametrize("item, msg", [
    ("nosuchkey=1", "unknown config key"),
    ("batch_size=abc", "must be an integer"),
    ("batch_size=0", r"must be an integer in \[1, 16777216\]"),
    ("variant=bogus", "must be one of"),
    ("reg_all_behaviors=3", "true or false"),
    ("nokeyvalue", "expected key=value"),
])
def test_bad_values_are_refused(item, msg):
    with pytest.raises(CmlError, match=msg):
        config.resolve(overrides=[item])


def test_bad_file_and_preset(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("- a list\n")
    with pytest.raises(CmlError, match="bad.yaml: expected a mapping"):
        config.resolve(config_file=f)
    with pytest.raises(CmlError, match="cannot read"):
        config.resolve(config_file=tmp_path / "missing.yaml")
    with pytest.raises(CmlError, match="unknown preset"):
        config.resolve(presets=["nope"])


def test_dump_roundtrips_through_base():
    cfg = config.resolve(presets=["ijcai15"], overrides=["seed=7"])
    import yaml

    again = config.resolve(base=yaml.safe_load(config.dump(cfg)))
    assert again == cfg


@pytest.mark.parametrize("item, msg", [
    ("eval_ks=[20]", "must include 10"),
    ("meta_users=mine", "must be one of"),
    ("opt_weight_decay=-1", ">= 0"),
    ("cl_sample_ratio=1.5", r"\(0, 1\]"),
    ("cl_temperature=0", "must be positive"),
])
def test_range_checks(item, msg):
    with pytest.raises(CmlError, match=msg):
        config.resolve(overrides=[item])
