"""Property-based fuzzing of the configuration surfaces (issue 14, point 13): `--set KEY=VALUE`
items and `--config` files, 1,000 derandomized cases each through the config resolution in
process, plus a few dozen through `cml train`. Every case ends in a configuration that is valid
and survives its own config.yaml, or in one CmlError line; never another exception, and no file
is touched outside the test's temporary folder (python tags never run)."""

import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cml_dgl.data.dataset import write_dataset
from cml_dgl.errors import CmlError
from cml_dgl.train import config
from conftest import make_tiny_dataset, run_cli

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = config.defaults()
KEYS = sorted(DEFAULTS)
MARKER = "FUZZ_PWNED"  # what a python tag in the cases would create, relative to the working folder
CASES = 1000
FUZZ = settings(max_examples=CASES, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck))
CLI_FUZZ = settings(FUZZ, max_examples=30)

TRICKY = [
    "nan", ".nan", ".NaN", ".inf", "-.inf", "+.inf", "1e999", "-1e999", "1e-400", "1e308", "4294967296",
    "4294967295", "-1", "0", "0x10", "0o17", "0b11", "1_000", "+1", "1.", ".5", "1e3", "1E3", "~", "null",
    "yes", "no", "on", "off", "True", "FALSE", "cuda", "cuda:0", "cuda:9999", "cuda:", "cuda:-1", "cuda:x",
    "gpu", "auto", "cpu", "cml", "mf", "full", "ndcg@10", "hr@20", "[10]", "[10, 20]", "[]", "[0]",
    "[10, 10.5]", "[true]", "[10, [20]]", "{}", "{a: 1}", "[1, 2", "'unterminated", '"esc \\x00"',
    "2001-12-14", "!!timestamp 2001-12-14", "!!binary aGVsbG8=", "!!set {a, b}", "!!float 1",
    "!!int 3", "!!str 3", "!!bool yes", "&a 1", "*a", "&a [1, *a]", "? a", "- a", "a: b", "|", ">",
    "# just a comment", "%YAML 1.1", "---", "...", "\t1", "1 # trailing", "[" * 30 + "]" * 30,
    f"!!python/object/apply:os.system ['touch {MARKER}']", f"!!python/object/apply:builtins.open ['{MARKER}', 'w']",
    "!!python/name:os.system", "!python/object:object {}", "9" * 400, "-" + "9" * 400, "1" * 5000,
]


def _yaml_scalar(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=10 ** 6).strip().removesuffix("...").strip()


scalars = st.one_of(
    st.integers(min_value=-(2 ** 80), max_value=2 ** 80), st.floats(), st.booleans(), st.none(),
    st.text(max_size=20), st.sampled_from(sorted({c for cs in config.CHOICES.values() for c in cs})),
)
values_text = st.one_of(
    st.sampled_from(TRICKY),
    scalars.map(_yaml_scalar),
    st.lists(scalars, max_size=4).map(_yaml_scalar),
    st.text(max_size=40),
    st.lists(st.sampled_from(TRICKY), min_size=2, max_size=3).map(" ".join),
)
def _typed_value(key: str) -> st.SearchStrategy[str]:
    """Values of the key's own type, near and beyond its limits: the cases that are often valid."""
    default = DEFAULTS[key]
    if isinstance(default, bool):
        plain = st.booleans()
    elif isinstance(default, int):
        lo, hi = config.INT_RANGES[key]
        plain = st.one_of(st.integers(lo, min(hi, lo + 64)), st.integers(lo - 3, lo + 3), st.integers(hi - 3, hi + 3),
                          st.integers(-(2 ** 70), 2 ** 70))
    elif isinstance(default, float):
        plain = st.one_of(st.floats(0, 1), st.floats(0.5, 1e6), st.floats())
    elif isinstance(default, list):
        plain = st.lists(st.integers(-2, config.EVAL_K_MAX + 2), max_size=6).map(lambda ks: [10, *ks])
    else:
        plain = st.sampled_from(config.CHOICES.get(key, (default,)) + ("cuda:1",) * (key == "device"))
    return plain.map(_yaml_scalar)


typed_items = st.sampled_from(KEYS).flatmap(lambda k: _typed_value(k).map(lambda v: f"{k}={v}"))
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(str.upper), st.text(max_size=12))
set_items = st.one_of(
    typed_items, typed_items, typed_items,
    st.builds(lambda k, v: f"{k}={v}", keys, values_text),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(KEYS), values_text),
    st.text(max_size=30),
)
file_lines = st.one_of(
    st.builds(lambda k, v: f"{k}: {v}", keys, values_text),
    st.builds(lambda k, v: f"  {k}: {v}", keys, values_text),
    st.sampled_from(["a: &a [x, x, x]", "b: &b [*a, *a, *a]", "dim: *b", "<<: {dim: 8}", "- 1", "---", "...",
                     "dim: 32", "seed: 7", "eval_ks: [10, 20]", "model: mf", "device: cuda:0"]),
    st.text(max_size=30),
)
config_files = st.one_of(
    st.lists(file_lines, max_size=8).map(lambda ls: ("\n".join(ls) + "\n").encode()),
    st.dictionaries(keys, scalars, max_size=6).map(lambda d: yaml.safe_dump(d).encode()),
    st.lists(typed_items, max_size=6).map(lambda items: "".join(i.replace("=", ": ", 1) + "\n" for i in items).encode()),
    st.lists(typed_items, max_size=6).map(lambda items: "".join(i.replace("=", ": ", 1) + "\n" for i in items).encode()),
    st.binary(max_size=120),
    st.tuples(st.lists(file_lines, max_size=4), st.binary(max_size=8)).map(
        lambda t: "\n".join(t[0]).encode() + t[1]),
)


def assert_valid(cfg: dict) -> None:
    """A resolved configuration: every key, the default's type, values in range, and it reads back
    from its own config.yaml as the same configuration."""
    assert set(cfg) == set(DEFAULTS)
    for key, value in cfg.items():
        default = DEFAULTS[key]
        assert type(value) is type(default), (key, value)
        if isinstance(value, float):
            assert math.isfinite(value), (key, value)
        elif isinstance(value, int) and not isinstance(value, bool):
            lo, hi = config.INT_RANGES[key]
            assert lo <= value <= hi, (key, value)
        elif isinstance(value, list):
            assert value and all(type(v) is int and 1 <= v <= config.EVAL_K_MAX for v in value), (key, value)
        elif isinstance(value, str) and key in config.CHOICES and key != "device":
            assert value in config.CHOICES[key], (key, value)
    assert config.resolve(base=yaml.safe_load(config.dump(cfg))) == cfg


def assert_one_line(e: CmlError) -> None:
    msg = str(e)
    assert msg and "\n" not in msg and "\r" not in msg and len(msg) < 600, msg
    assert "Traceback" not in msg


def snapshot(folder: Path) -> dict[str, float]:
    skip = {"__pycache__", ".pytest_cache", ".hypothesis", ".git"}
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
            if not skip & set(p.relative_to(folder).parts)}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Work in an empty folder; afterwards the repository is unchanged and the folder holds only
    what the test itself wrote."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = snapshot(REPO)
    yield work
    assert snapshot(REPO) == before, "the fuzzed cases touched files in the repository"
    assert not (work / MARKER).exists() and not (REPO / MARKER).exists(), "a python tag ran"


def test_fuzz_set_items(sandbox):
    outcomes = {"valid": 0, "refused": 0}

    @FUZZ
    @given(items=st.lists(set_items, min_size=1, max_size=3))
    def case(items):
        try:
            cfg = config.resolve(overrides=items)
        except CmlError as e:
            assert_one_line(e)
            outcomes["refused"] += 1
            return
        assert_valid(cfg)
        outcomes["valid"] += 1

    case()
    assert sum(outcomes.values()) >= CASES
    assert outcomes["valid"] > 50 and outcomes["refused"] > 50, outcomes
    assert sorted(os.listdir(sandbox)) == []


def test_fuzz_config_files(sandbox):
    outcomes = {"valid": 0, "refused": 0}
    path = sandbox / "fuzz.yaml"

    @FUZZ
    @given(data=config_files, items=st.lists(set_items, max_size=1))
    def case(data, items):
        path.write_bytes(data)
        try:
            cfg = config.resolve(config_file=path, overrides=items)
        except CmlError as e:
            assert_one_line(e)
            outcomes["refused"] += 1
            return
        assert_valid(cfg)
        outcomes["valid"] += 1

    case()
    assert sum(outcomes.values()) >= CASES
    assert outcomes["valid"] > 50 and outcomes["refused"] > 50, outcomes
    assert sorted(os.listdir(sandbox)) == ["fuzz.yaml"]


def _refused(items=(), data=None) -> bool:
    try:
        config.resolve(config_file=data, overrides=items)
    except CmlError:
        return True
    return False


def test_fuzz_train_refuses_bad_configs_in_one_line_and_writes_nothing(sandbox, tmp_path):
    ds = tmp_path / "ds"
    write_dataset(make_tiny_dataset(), ds)
    seen = {"set": 0, "file": 0}

    @CLI_FUZZ
    @given(items=st.lists(set_items, min_size=1, max_size=2), data=st.one_of(st.none(), config_files))
    def case(items, data):
        path = None
        if data is not None:
            path = sandbox / "c.yaml"
            path.write_bytes(data)
        if not _refused(items, path):
            return  # a valid configuration would start training: the in-process cases cover it
        seen["file" if path is not None else "set"] += 1
        args = [a for item in items for a in ("--set", item)] + (["--config", path] if path else [])
        res = run_cli("train", ds, "-o", sandbox / "run", "--quiet", *args)
        assert res.exit_code == 2, (res.exit_code, res.stderr, res.exception)
        err = res.stderr.strip()
        assert "Traceback" not in res.stderr
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        if err.startswith("error: "):
            assert "\n" not in err and len(err) < 600, err
        else:  # Click's usage errors (an item Click itself cannot pass) end in one "Error:" line
            assert err.splitlines()[-1].startswith("Error: "), err
        assert not (sandbox / "run").exists()
        if path is not None:
            path.unlink()

    case()
    assert seen["set"] >= 5 and seen["file"] >= 5, seen
