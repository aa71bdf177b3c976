"""cml tune: the registry's search spaces, TPE seeded by --seed, pruning on validation, a resumable
SQLite study, best.yaml for cml train, and no trial ever reading the test split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cml_dgl.data.dataset import load_dataset, write_dataset
from cml_dgl.data.synth import synthetic_dataset
from cml_dgl.errors import CmlError
from cml_dgl.models import registry
from cml_dgl.models.search_space import Choice, IntRange, LogUniform, Uniform
from cml_dgl.train import config
from tests.conftest import assert_one_line_error, run_cli, run_cli_ok

optuna = pytest.importorskip("optuna", reason="cml tune needs optuna (requirements.lock pins it)")

REPO = Path(__file__).resolve().parents[1]
TUNE = ["--model", "mf", "--epochs", "2", "--startup-trials", "1", "--warmup-epochs", "0", "--backend", "torch",
        "--set", "batch_size=256"]


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune") / "ds"
    write_dataset(synthetic_dataset(n_users=120, n_items=220, n_edges=3000, seed=1), d)
    return d


def trial_lines(output: str) -> list[dict]:
    rows = [json.loads(x) for x in output.splitlines() if x.startswith("{")]
    return [r for r in rows if "trial" in r and "state" in r]


def load_study(out: Path):
    return optuna.load_study(study_name="cml-tune", storage=f"sqlite:///{out / 'study.db'}")


def valid_curve(run_dir: str) -> dict[int, float]:
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["epoch"]: r["valid"]["ndcg@10"] for r in rows}


# ---------------------------------------------------------------------------- search spaces
def test_every_search_space_is_valid_config():
    keys = config.defaults()
    for spec in registry.REGISTRY.values():
        for end in (0, 1):  # every key at its low end, then at its high end (as far as a constraint allows)
            values: dict = {}
            for key, dist in spec.search_space.items():
                values[key] = dist.bounds()[end]
                if isinstance(dist, Uniform):
                    values[key] = min(values[key], dist.grid_high(values))
            config.resolve(overrides=[f"model={spec.name}"] + [f"{k}={v!r}" for k, v in values.items()])
        for i, (key, dist) in enumerate(spec.search_space.items()):
            assert key in keys and key != "model", (spec.name, key)
            if isinstance(dist, LogUniform) and dist.at_least:
                ref = spec.search_space.get(dist.at_least)
                assert dist.at_least in keys and dist.at_least not in list(spec.search_space)[i:]
                assert (ref.bounds()[1] if ref else keys[dist.at_least]) <= dist.high  # never an empty range
            if isinstance(dist, Uniform) and dist.sum_at_most:
                ref = spec.search_space.get(dist.sum_at_most[0])
                assert dist.sum_at_most[0] in keys and dist.sum_at_most[0] not in list(spec.search_space)[i:]
                assert (ref.bounds()[1] if ref else keys[dist.sum_at_most[0]]) + dist.low <= dist.sum_at_most[1]
    for name in ("cml", "mf", "lightgcn", "lightgcn-merged", "itemknn", "cascading-rank"):
        assert registry.REGISTRY[name].search_space, name
    assert {"beta", "cl_temperature", "n_layers", "opt_max_lr"} <= set(registry.REGISTRY["cml"].search_space)
    assert not registry.REGISTRY["pop"].search_space


def test_the_docs_search_space_table_is_the_registry():
    usage = (REPO / "docs" / "usage.md").read_text()
    block = usage.split("<!-- search-spaces:begin -->")[1].split("<!-- search-spaces:end -->")[0]
    assert "\n".join(block.strip().splitlines()[2:]) == registry.search_space_table()


def test_suggest_draws_from_each_distribution():
    from cml_dgl.tuning import suggest

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        t = study.ask()
        base = suggest(t, "opt_base_lr", LogUniform(1e-4, 1e-2), {})
        peak = suggest(t, "opt_max_lr", LogUniform(1e-3, 5e-2, at_least="opt_base_lr"), {"opt_base_lr": base})
        n = suggest(t, "n_layers", IntRange(1, 5, step=2), {})
        d = suggest(t, "dim", Choice((16, 32)), {})
        assert 1e-4 <= base <= 1e-2 and max(base, 1e-3) <= peak <= 5e-2 and n in (1, 3, 5) and d in (16, 32)
        study.tell(t, 0.0)
    alpha = Uniform(0.0, 0.5, 0.05, sum_at_most=("cascade_beta", 1.0))
    drawn = set()
    for _ in range(60):
        t = study.ask()
        beta = suggest(t, "cascade_beta", Uniform(0.0, 0.95, 0.05), {})
        a = suggest(t, "cascade_alpha", alpha, {"cascade_beta": beta})
        assert a + beta <= 1.0 and a <= 0.5 and round(a * 20) == a * 20 and round(beta * 20) == beta * 20, (a, beta)
        config.resolve(overrides=["model=cascading-rank", f"cascade_alpha={a!r}", f"cascade_beta={beta!r}"])
        drawn.add(a + beta == 1.0)
        study.tell(t, 0.0)
    assert drawn == {True, False}  # the constraint's edge is reached, and exactly
    with pytest.raises(CmlError, match="opt_max_lr is searched in \\[0.001, 0.002\\] but must be at least "
                                       "opt_base_lr = 0.01"):
        suggest(study.ask(), "opt_max_lr", LogUniform(1e-3, 2e-3, at_least="opt_base_lr"), {"opt_base_lr": 0.01})


# ---------------------------------------------------------------------------- a study
@pytest.fixture(scope="module")
def study_dir(ds_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "out"
    res = run_cli_ok("tune", ds_dir, "--trials", "3", "-o", out, *TUNE)
    return out, res.stdout


def test_a_study_reports_each_epoch_and_writes_its_files(study_dir):
    out, output = study_dir
    lines = trial_lines(output)
    assert [r["trial"] for r in lines] == [0, 1, 2] and all(r["state"] in ("complete", "pruned") for r in lines)
    summary = json.loads(output.splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    study = load_study(out)
    assert len(study.trials) == 3
    space = registry.REGISTRY["mf"].search_space
    for t in study.trials:
        run = Path(t.user_attrs["run_dir"])
        assert run == out / "trials" / f"{t.number:04d}"
        assert t.intermediate_values == valid_curve(run)  # each epoch's validation NDCG@10, reported
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["monitor"] == "valid" and cfg["model"] == "mf" and cfg["epochs"] == 2
        assert set(t.params) == set(space) and all(cfg[k] == v for k, v in t.params.items())
        assert t.params["opt_max_lr"] >= t.params["opt_base_lr"]
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == max(t.intermediate_values.values())
            run_summary = json.loads((run / "summary.json").read_text())
            assert "test_at_best" not in run_summary and "test_groups" not in run_summary
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    assert summary["best_trial"] == best.number and summary["best_value"] == best.value
    assert summary["trials"]["complete"] == len(complete)


def test_best_yaml_trains_with_cml_train(study_dir, ds_dir, tmp_path):
    out, output = study_dir
    summary = json.loads(output.splitlines()[-1])
    best = yaml.safe_load((out / "best.yaml").read_text())
    trial_cfg = yaml.safe_load((Path(summary["best_run_dir"]) / "config.yaml").read_text())
    assert best == trial_cfg and best["model"] == "mf"
    run_cli_ok("train", ds_dir, "-o", tmp_path / "run", "--config", out / "best.yaml", "--epochs", "1", "--quiet")
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == {**trial_cfg, "epochs": 1}


def test_a_rerun_continues_the_study_up_to_the_total(study_dir, ds_dir, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(study_dir[0], out)
    more = run_cli_ok("tune", ds_dir, "--trials", "4", "-o", out, *TUNE).stdout
    assert [r["trial"] for r in trial_lines(more)] == [3] and len(load_study(out).trials) == 4
    again = run_cli_ok("tune", ds_dir, "--trials", "4", "-o", out, *TUNE, "--quiet").stdout
    assert trial_lines(again) == [] and len(load_study(out).trials) == 4
    # a trial left running by an interrupted process: failed, not counted, done again
    load_study(out).ask()
    resumed = run_cli_ok("tune", ds_dir, "--trials", "5", "-o", out, *TUNE).stdout
    states = [t.state for t in load_study(out).trials]
    assert [r["trial"] for r in trial_lines(resumed)] == [5] and states[4] == optuna.trial.TrialState.FAIL
    assert len(states) == 6 and json.loads(resumed.splitlines()[-1])["trials"]["fail"] == 1
    # another model, another base config, another dataset: refused, nothing run
    assert_one_line_error(run_cli("tune", ds_dir, "--trials", "6", "-o", out, *TUNE[:-2], "--set", "batch_size=128"),
                          "another base config", "batch_size: 256 then, 128 now")
    cml = [a if a != "mf" else "lightgcn" for a in TUNE]
    assert_one_line_error(run_cli("tune", ds_dir, "--trials", "6", "-o", out, *cml), "another model")
    other = tmp_path / "other"
    write_dataset(synthetic_dataset(n_users=120, n_items=220, n_edges=3000, seed=2), other)
    assert_one_line_error(run_cli("tune", other, "--trials", "6", "-o", out, *TUNE), "another dataset")
    assert len(load_study(out).trials) == 6


def test_the_sampler_is_seeded_by_seed(ds_dir, tmp_path):
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        run_cli_ok("tune", ds_dir, "--trials", "2", "-o", tmp_path / name, "--seed", str(seed), "--quiet", *TUNE)
        runs[name] = [(t.params, t.value, t.state) for t in load_study(tmp_path / name).trials]
        assert yaml.safe_load((tmp_path / name / "trials" / "0000" / "config.yaml").read_text())["seed"] == seed
    assert runs["a"] == runs["b"] and [p for p, _, _ in runs["a"]] != [p for p, _, _ in runs["c"]]


# ---------------------------------------------------------------------------- guarantees
def test_no_trial_reads_the_test_split(ds_dir, tmp_path, monkeypatch):
    import cml_dgl
    from cml_dgl.train import trainer as trainer_mod

    ds = load_dataset(ds_dir)
    scored: list[np.ndarray] = []
    real = trainer_mod.evaluate_sampled
    monkeypatch.setattr(trainer_mod, "evaluate_sampled",
                        lambda scorer, pairs, *a, **k: scored.append(np.asarray(pairs)) or real(scorer, pairs, *a, **k))
    monkeypatch.setattr(trainer_mod, "evaluate", lambda *a, **k: pytest.fail("a trial evaluated a test split"))
    summary = cml_dgl.tune(ds_dir, tmp_path / "out", model="lightgcn", trials=2, startup_trials=0,
                           overrides={"epochs": 2, "backend": "torch", "batch_size": 256, "monitor": "test"})
    assert summary["trials"]["complete"] == 2  # monitor: test in the layers is overridden by valid
    assert len(scored) == 4 and all(np.array_equal(p, ds.valid) for p in scored)


def test_a_pruned_trial_stops_at_the_epoch_it_is_pruned(ds_dir, tmp_path):
    import cml_dgl

    class PruneOdd(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number % 2 == 1

    summary = cml_dgl.tune(ds_dir, tmp_path / "out", model="mf", trials=3, pruner=PruneOdd(),
                           overrides={"epochs": 3, "backend": "torch", "batch_size": 256})
    trials = load_study(tmp_path / "out").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert list(valid_curve(trials[1].user_attrs["run_dir"])) == [1] == list(trials[1].intermediate_values)
    assert list(valid_curve(trials[0].user_attrs["run_dir"])) == [1, 2, 3]
    assert summary["trials"] == {"complete": 2, "pruned": 1, "fail": 0}


def test_tune_refuses_with_one_line(ds_dir, tmp_path):
    assert_one_line_error(run_cli("tune", ds_dir, "--model", "pop", "--trials", "2", "-o", tmp_path / "a"),
                          "model 'pop' has no search space")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("mine")
    assert_one_line_error(run_cli("tune", ds_dir, "--trials", "2", "-o", tmp_path / "busy", *TUNE),
                          "holds no study.db")
    ds = load_dataset(ds_dir)
    ds.valid, ds.valid_negatives = np.zeros((0, 2), np.int32), np.zeros((0, 99), np.int32)
    write_dataset(ds, tmp_path / "novalid")
    assert_one_line_error(run_cli("tune", tmp_path / "novalid", "--trials", "2", "-o", tmp_path / "b", *TUNE),
                          "no validation split")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "study.db").exists()


def test_everything_else_works_without_optuna(tmp_path):
    code = (
        "import sys; sys.modules['optuna'] = None\n"
        "import cml_dgl, cml_dgl.tuning\n"
        "from cml_dgl_cli.main import cli\n"
        "from click.testing import CliRunner\n"
        "assert CliRunner().invoke(cli, ['train', '--help']).exit_code == 0\n"
        "res = CliRunner().invoke(cli, ['tune', sys.argv[1], '--model', 'mf', '--trials', '1', '-o', sys.argv[2]])\n"
        "assert res.exit_code == 2, res.output\n"
        "print(res.output.strip())\n"
    )
    env_path = f"{REPO}{':' + str(REPO / '.shim') if (REPO / '.shim').exists() else ''}"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nods"), str(tmp_path / "o")],
                         capture_output=True, text=True, env={"PYTHONPATH": env_path}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("error: cml tune needs optuna: pip install 'cml-dgl[tune]'")


def test_the_api_name_is_the_function_after_the_module_is_imported():
    import cml_dgl
    import cml_dgl.tuning  # noqa: F401  (a submodule named tune would shadow the function)

    assert callable(cml_dgl.tune) and cml_dgl.tune.__module__ == "cml_dgl.api"
