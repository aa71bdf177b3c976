"""One source for every list of names: the model registry, presets, tie rules, backends, samplers."""

from __future__ import annotations

import ast
import re
from importlib import resources
from pathlib import Path

import click
import pytest
import torch
import yaml

from cml_dgl.errors import CmlError
from cml_dgl.eval.metrics import TIE_RULES
from cml_dgl.graph.backends import BACKENDS
from cml_dgl.models import registry
from cml_dgl.models.base import Recommender
from cml_dgl.train import config
from cml_dgl.train.draws import SAMPLERS
from cml_dgl.train.strategies import STRATEGIES
from cml_dgl_cli.main import cli
from tests.conftest import make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
USAGE = (REPO / "docs" / "usage.md").read_text()


def _choices(command: str, option: str) -> tuple[str, ...]:
    cmd = cli.commands[command]
    param = next(p for p in cmd.params if option in p.opts)
    assert isinstance(param.type, click.Choice)
    return tuple(param.type.choices)


def _doc_row(key: str) -> str:
    return next(line for line in USAGE.splitlines() if line.startswith(f"| `{key}"))


def test_the_docs_model_table_is_the_registry():
    block = USAGE.split("<!-- models:begin -->")[1].split("<!-- models:end -->")[0]
    rows = [line for line in block.strip().splitlines()[2:]]
    assert "\n".join(rows) == registry.markdown_table()
    assert [re.match(r"\| `([^`]+)`", r).group(1) for r in rows] == list(registry.MODELS)


def test_cli_and_config_choices_come_from_their_sources():
    assert _choices("train", "--model") == registry.MODELS == config.CHOICES["model"]
    assert _choices("train", "--preset") == config.PRESETS
    assert _choices("train", "--backend") == BACKENDS == config.CHOICES["backend"]
    assert _choices("evaluate", "--tie-rule") == TIE_RULES == config.CHOICES["tie_rule"]
    assert config.CHOICES["sampler"] == SAMPLERS
    presets = {p.name[:-5] for p in resources.files("cml_dgl.train").joinpath("presets").iterdir()
               if p.name.endswith(".yaml")}
    assert presets - {"defaults"} == set(config.PRESETS)


def test_the_docs_list_every_value():
    for key, values in (("--preset", config.PRESETS), ("--tie-rule", TIE_RULES), ("backend", BACKENDS),
                        ("sampler", SAMPLERS)):
        row = _doc_row(key)
        assert all(f"`{v}`" in row or f"{v}\\|" in row or f"|{v}`" in row for v in values), (key, row)


def test_every_strategy_named_by_the_registry_exists():
    assert set(registry.STRATEGIES) == set(STRATEGIES)
    for spec in registry.REGISTRY.values():
        assert spec.strategy in STRATEGIES and issubclass(spec.cls, Recommender)
    with pytest.raises(CmlError, match="unknown model 'nope'"):
        registry.spec("nope")
    with pytest.raises(CmlError, match="model must be one of"):
        config.resolve(overrides=["model=nope"])


def test_a_models_defaults_sit_below_presets_files_and_sets(monkeypatch, tmp_path):
    spec = registry.REGISTRY["mf"]
    monkeypatch.setitem(registry.REGISTRY, "mf", registry.ModelSpec(
        spec.name, spec.cls, spec.strategy, spec.summary, defaults={"dim": 48, "reg": 0.5}))
    assert config.resolve(overrides=["model=mf"])["dim"] == 48
    assert config.resolve(overrides=["model=mf", "dim=8"])["dim"] == 8
    f = tmp_path / "c.yaml"
    f.write_text("model: mf\nreg: 0.25\n")
    cfg = config.resolve(config_file=f)
    assert (cfg["dim"], cfg["reg"]) == (48, 0.25)
    assert config.resolve(overrides=["model=cml"])["dim"] == config.defaults()["dim"]
    # a resumed run keeps its saved config: the model's defaults do not come back
    assert config.resolve(base={"model": "mf", "dim": 8})["dim"] == 8


def test_a_new_model_needs_only_a_class_and_a_registry_line(monkeypatch, tmp_path):
    """The trainer, run directory and evaluator take an unknown-to-them model through the registry."""

    class Constant(Recommender):
        @classmethod
        def from_config(cls, ds, cfg, device):
            m = cls()
            m.register_buffer("u", torch.ones(ds.n_users, 1))
            m.register_buffer("i", torch.arange(ds.n_items, dtype=torch.float32).unsqueeze(1))
            return m

        def embeddings(self):
            return self.u, self.i

    monkeypatch.setitem(registry.REGISTRY, "constant", registry.ModelSpec("constant", Constant, "none", "test"))
    from cml_dgl.train.trainer import Trainer

    tr = Trainer(make_tiny_dataset(), config.resolve(overrides=["model=constant"]), tmp_path / "run", quiet=True)
    tr.prepare_run_dir()
    out = tr.fit()
    assert out["best_epoch"] == 0 and "test_at_best" in out


def test_the_loop_never_branches_on_a_models_name():
    for name in ("trainer.py", "strategies.py"):
        src = (REPO / "cml_dgl" / "train" / name).read_text()
        tree = ast.parse(src)
        names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not names & set(registry.MODELS), (name, names & set(registry.MODELS))
        assert "is_cml" not in src
    assert len((REPO / "cml_dgl" / "train" / "trainer.py").read_text().splitlines()) <= 300


def test_the_docs_default_column_is_defaults_yaml():
    """Every row of a `| key | default |` table in docs/usage.md's configuration section shows the
    key's value in defaults.yaml (read as YAML, backticks stripped)."""
    section = USAGE.split("### Configuration keys")[1].split("### Several processes")[0]
    defaults, wrong, in_table = config.defaults(), [], False
    for line in section.splitlines():
        in_table = line.startswith("| key | default |") or (in_table and line.startswith("|"))
        cells = [c.strip() for c in line.split("|")[1:3]] if in_table else []
        key = cells[0].strip("`") if cells else ""
        if key in defaults and yaml.safe_load(cells[1].strip("`")) != defaults[key]:
            wrong.append(f"{key}: docs {cells[1]}, defaults.yaml {defaults[key]!r}")
    assert not wrong, wrong


def test_the_docs_presets_table_is_the_preset_files():
    """docs/usage.md's `| key | defaults | <preset> ...` table shows, per preset column, exactly the
    keys that preset sets, with its values (floats to the 3 significant digits shown); every key a
    shown preset sets has a row."""
    lines = USAGE.split("### Presets")[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| key | defaults |"))
    header = [c.strip() for c in lines[start].split("|")[1:-1]]
    names = header[2:]
    table = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.split("|")[1:-1]]
        table[cells[0].strip("`")] = cells[1:]

    def same(shown: str, value) -> bool:
        got = yaml.safe_load(shown)
        return float(f"{value:.3g}") == got if isinstance(value, float) else got == value

    wrong = []
    for j, name in enumerate(names, start=1):
        preset = config.preset(name)
        wrong += [f"{name}: {k} has no row" for k in preset if k not in table]
        for key, cells in table.items():
            if key in preset and not same(cells[j], preset[key]):
                wrong.append(f"{name}.{key}: docs {cells[j]!r}, preset {preset[key]!r}")
            elif key not in preset and cells[j]:
                wrong.append(f"{name}.{key}: docs {cells[j]!r}, preset does not set it")
    for key, cells in table.items():
        if not same(cells[0], config.defaults()[key]):
            wrong.append(f"defaults.{key}: docs {cells[0]!r}")
    assert names and not wrong, wrong


def test_every_config_key_has_a_row_in_the_docs():
    section = USAGE.split("### Configuration keys")[1].split("### Several processes")[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    missing = [k for k in config.defaults() if not any(f"`{k}`" in cell for cell in first_cells)]
    assert not missing, f"config keys without a row in docs/usage.md: {missing}"
