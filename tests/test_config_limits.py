"""Numbers checked up front and YAML read with bounds (issue 14, points 3 and 4): out-of-range
seeds and sizes, integers that overflow and NaN or infinite floats in any layer are one-line
errors naming the key and its range; aliases, deep nesting, duplicate keys, python tags, binary
and oversized files are refused before anything is expanded."""

import pytest

from cml_dgl.data.dataset import write_dataset
from cml_dgl.errors import CmlError
from cml_dgl.train import config
from conftest import assert_one_line_error, make_tiny_dataset, run_cli

BILLION_LAUGHS = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + n)}: &{chr(98 + n)} [{', '.join(['*' + chr(97 + n)] * 9)}]" for n in range(8)]
    + ["dim: *i"]) + "\n"


@pytest.mark.parametrize("item, expected", [
    ("seed=-1", "seed must be an integer in [0, 4294967295], got -1"),
    ("seed=4294967296", "seed must be an integer in [0, 4294967295], got 4294967296"),
    ("dim=100000000000000000000000000000", "dim must be an integer in [1, 4096]"),
    ("batch_size=1000000000000", "batch_size must be an integer in [1, 16777216]"),
    ("epochs=99999999999999999999", "epochs must be an integer in [0, 1000000]"),
    ("meta_samples=-5", "meta_samples must be an integer in [1, 65536]"),
    ("reg=.nan", "reg must be a finite number, got nan"),
    ("beta=.inf", "beta must be a finite number, got inf"),
    ("grad_clip=-.inf", "grad_clip must be a finite number, got -inf"),
    ("lr_clone=1e999", "lr_clone must be a finite number, got inf"),
    ("meta_gamma=" + "9" * 400, "meta_gamma must be a finite number"),
    ("eval_ks=[10, 100000000000]", "eval_ks must be a list of 1 to 64 integers in [1, 1048576]"),
    ("eval_ks=[]", "eval_ks must be a list of 1 to 64 integers"),
])
def test_out_of_range_numbers_name_the_key_and_the_range(item, expected):
    with pytest.raises(CmlError) as e:
        config.resolve(overrides=[item])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_the_ranges_hold_in_config_files_and_saved_configs_too(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("reg: .nan\n")
    with pytest.raises(CmlError, match=r"c.yaml: reg must be a finite number, got nan"):
        config.resolve(config_file=f)
    with pytest.raises(CmlError, match=r"run/config.yaml: seed must be an integer in \[0, 4294967295\]"):
        config.resolve(base={"seed": 2 ** 40}, base_where="run/config.yaml")
    assert config.resolve(overrides=["seed=0"])["seed"] == 0
    assert config.resolve(overrides=["seed=4294967295"])["seed"] == 4294967295


def test_long_values_are_quoted_short():
    with pytest.raises(CmlError) as e:
        config.resolve(overrides=["model=" + "x" * 100_000])
    msg = str(e.value)
    assert len(msg) < 450 and "(100,002 characters)" in msg and msg.count("x") < 300
    for item in ("dim=1\nepochs: 3", "dim=1\u2028epochs: 3", "dim=1\x85v: 3"):  # YAML's line breaks
        with pytest.raises(CmlError) as e:
            config.resolve(overrides=[item])
        assert "\n" not in str(e.value) and "expected the value on one line" in str(e.value)


@pytest.mark.parametrize("item", ["activation=!!float 1 nan", "dim=!!int 3 x", "seed=!!timestamp 2001-13-99"])
def test_tagged_values_that_do_not_parse_are_refused(item):
    """Found by tests/test_fuzz_cli_config.py: PyYAML raised ValueError for these."""
    with pytest.raises(CmlError, match="not valid YAML"):
        config.resolve(overrides=[item])


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(BILLION_LAUGHS)  # 9**9 = 387 million strings once expanded
    with pytest.raises(CmlError) as e:
        config.resolve(config_file=f)
    assert "bomb.yaml: not valid YAML (line 2, column" in str(e.value)
    assert "aliases (*a) are not allowed" in str(e.value)
    with pytest.raises(CmlError, match="aliases"):
        config.resolve(overrides=["eval_ks=*a"])


@pytest.mark.parametrize("text, expected", [
    ("dim: " + "[" * 40 + "1" + "]" * 40 + "\n", "nested deeper than 16 levels"),
    ("dim: 32\nbeta: 0.1\ndim: 64\n", "line 3, column 1: key dim appears twice"),
    ("dim: !!python/object/apply:os.system ['touch pwned']\n",
     "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    ("dim: [unclosed\n", "not valid YAML (line 2"),
    ("dim: 1\x00\n", "unacceptable character #x0000"),
    ("- dim\n", "expected a mapping of config keys, got list"),
])
def test_bad_yaml_files_are_one_line_errors(tmp_path, text, expected):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(CmlError) as e:
        config.resolve(config_file=f)
    assert expected in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"], "nothing ran"


def test_binary_and_oversized_files_are_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_bytes(b"dim: 16\n\xff\xfe\x00garbage")
    with pytest.raises(CmlError, match=r"c.yaml: not a text file \(byte 8 is not UTF-8\)"):
        config.resolve(config_file=f)
    f.write_text("# padding\n" * 200_000)
    with pytest.raises(CmlError, match=r"c.yaml: config file is larger than 1,048,576 bytes"):
        config.resolve(config_file=f)


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "ds"
    write_dataset(make_tiny_dataset(), d)
    return d


@pytest.mark.parametrize("args, fragments", [
    (["--set", "seed=-1"], ["--set seed=-1: seed must be an integer in [0, 4294967295]"]),
    (["--set", "batch_size=99999999999"], ["batch_size must be an integer in [1, 16777216]"]),
    (["--set", "reg=nan"], ["reg must be a number, got 'nan'"]),
    (["--set", "cl_temperature=.inf"], ["cl_temperature must be a finite number"]),
    (["--epochs", "10000000000"], ["epochs must be an integer in [0, 1000000]"]),
    (["--config", "BOMB"], ["not valid YAML", "aliases (*a) are not allowed"]),
])
def test_train_refuses_before_creating_the_run_directory(ds_dir, tmp_path, args, fragments):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    args = [str(bomb) if a == "BOMB" else a for a in args]
    res = run_cli("train", ds_dir, "-o", tmp_path / "run", "--quiet", *args)
    assert_one_line_error(res, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [["train", "DS", "-o", "RUN", "--seed", "-1"],
                                  ["train", "DS", "-o", "RUN", "--seed", "4294967296"],
                                  ["preprocess", "csv", "IN", "-o", "RUN", "--behaviors", "a,b",
                                   "--seed", "-3"],
                                  ["demo", "--out", "RUN", "--seed", "99999999999999"]])
def test_seed_options_are_range_checked_by_click(ds_dir, tmp_path, args):
    (tmp_path / "in.csv").write_text("user,item,behavior,timestamp\n1,1,b,1\n")
    args = [{"DS": ds_dir, "RUN": tmp_path / "out", "IN": tmp_path / "in.csv"}.get(a, a) for a in args]
    res = run_cli(*args)
    assert res.exit_code == 2 and "Traceback" not in res.output + res.stderr
    assert "'--seed'" in res.stderr and "0<=x<=4294967295" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("item, message", [
    ("model=[cml]", "model must be a string"),           # unhashable: once a TypeError in the model-defaults layer
    ("seed=!!timestamp x", "does not fit its tag"),      # PyYAML's timestamp constructor: AttributeError
])
def test_fuzzer_finds_after_the_baselines_keys_are_one_line_errors(item, message):
    with pytest.raises(CmlError, match=message):
        config.resolve(overrides=[item])
