"""Runs know their dataset and their configuration (issue 14, points 5 and 7): run.json records the
dataset's checksums, and evaluate, export-embeddings, recommend and --resume refuse a dataset
rebuilt since training unless --allow-changed-dataset; an edited, binary or tagged config.yaml
and a GPU that torch does not see are one-line errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from cml_dgl.errors import CmlError
from cml_dgl.train.devices import resolve_device
from conftest import assert_one_line_error, run_cli, run_cli_ok

MF = ["--model", "mf", "--backend", "torch", "--quiet", "--set", "batch_size=64", "--set", "dim=8"]


def write_log(path, n_users=25, n_items=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = ["user,item,behavior,timestamp"]
    for u in range(n_users):
        for n in range(12):
            b = "buy" if n < 4 else ("view", "cart")[n % 2]
            rows.append(f"u{u},{int(rng.integers(n_items))},{b},{1000 + u * 50 + n}")
    path.write_text("\n".join(rows) + "\n")
    return path


def preprocess(log, out, *extra):
    run_cli_ok("preprocess", "csv", log, "-o", out, "-q", "--behaviors", "view,cart,buy",
               "--negatives", "10", "--overwrite", *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    log = write_log(root / "log.csv")
    preprocess(log, root / "ds")
    run_cli_ok("train", root / "ds", "-o", root / "run", "--epochs", "1", *MF)
    return root


@pytest.fixture
def copy(trained, tmp_path):
    """A private copy of the dataset and the run (run.json pointing at the copy)."""
    shutil.copytree(trained / "ds", tmp_path / "ds")
    shutil.copytree(trained / "run", tmp_path / "run")
    info = tmp_path / "run" / "run.json"
    info.write_text(json.dumps(dict(json.loads(info.read_text()), dataset=str(tmp_path / "ds"))))
    return trained / "log.csv", tmp_path / "ds", tmp_path / "run"


def readers(run, tmp_path):
    return [("evaluate", run), ("export-embeddings", run, "-o", tmp_path / "emb"),
            ("recommend", run, "--user", "u3"), ("train", "--resume", run, "--epochs", "2", "--quiet")]


def test_run_json_records_the_datasets_checksums(copy):
    _, ds, run = copy
    info = json.loads((run / "run.json").read_text())
    meta = json.loads((ds / "meta.json").read_text())
    fp = info["dataset_fingerprint"]
    assert fp["checksums"] == {name: entry["sha256"] for name, entry in meta["files"].items()}
    assert fp["seed"] == 2023 and fp["options"]["valid"] is True and "stats" not in fp["options"]


@pytest.mark.parametrize("rebuild, named", [
    (["--seed", "7"], ["seed 2023 -> 7", "test_negatives.npy", "valid_negatives.npy", "test candidates"]),
    (["--no-valid"], ["valid true -> false", "valid.npy", "train_user.npy", "training edges"]),
])
def test_a_rebuilt_dataset_is_refused_naming_what_changed(copy, tmp_path, rebuild, named):
    log, ds, run = copy
    preprocess(log, ds, *rebuild)  # same raw ids: the id-map check alone let it through
    for args in readers(run, tmp_path):
        res = run_cli(*args)
        assert_one_line_error(res, f"{ds}: the dataset changed since {run} was trained", *named,
                              "--allow-changed-dataset")
    assert not (tmp_path / "emb").exists()
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_allow_changed_dataset_goes_ahead_with_a_warning(copy, tmp_path):
    log, ds, run = copy
    preprocess(log, ds, "--seed", "7")
    for args in readers(run, tmp_path):
        res = run_cli(*args, "--allow-changed-dataset")
        assert res.exit_code == 0, res.stderr
        assert "warning:" in res.stderr and "seed 2023 -> 7" in res.stderr and "going ahead" in res.stderr
    assert (tmp_path / "emb" / "manifest.json").is_file()
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_the_same_dataset_at_another_path_is_accepted(copy, tmp_path):
    _, ds, run = copy
    shutil.copytree(ds, tmp_path / "moved")
    res = run_cli_ok("evaluate", run, "--dataset", tmp_path / "moved", "--json")
    assert "warning" not in res.stderr


@pytest.mark.parametrize("edit, fragments", [
    (lambda t: t.replace("dim: 8", "dim: 32"), ["config.yaml: differs from the configuration",
                                                "dim: 32 vs 8", "was it edited?"]),
    (lambda t: t.replace("dim: 8", "dim: 0"), ["config.yaml: dim must be an integer in [1, 4096], got 0"]),
    (lambda t: t + "extra: !!python/object/apply:os.system ['touch PWNED']\n",
     ["config.yaml: not valid YAML", "could not determine a constructor"]),
    (lambda t: b"\x89PNG\r\n\x1a\n\x00\x00" + t.encode(), ["config.yaml: not a text file (byte 0 is not UTF-8)"]),
    # an empty file reads as a run saved before every key (its SAVED_WITHOUT values, else defaults)
    (lambda t: "", ["config.yaml: differs from the configuration", "aux_draws: target vs edges"]),
])
def test_an_edited_config_yaml_is_a_one_line_error(copy, tmp_path, monkeypatch, edit, fragments):
    _, ds, run = copy
    monkeypatch.chdir(tmp_path)
    cfg = run / "config.yaml"
    new = edit(cfg.read_text())
    cfg.write_bytes(new if isinstance(new, bytes) else new.encode())
    for args in readers(run, tmp_path):
        assert_one_line_error(run_cli(*args), *fragments)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "emb").exists()


def test_a_damaged_run_json_is_a_one_line_error(copy):
    _, _, run = copy
    (run / "run.json").write_bytes(b"\xff\xfe[1, 2")
    assert_one_line_error(run_cli("evaluate", run), "run.json: not valid JSON")
    (run / "run.json").write_text("[1, 2]")
    assert_one_line_error(run_cli("evaluate", run), "run.json: expected a JSON object, got list")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_a_gpu_that_torch_does_not_see_is_one_line(copy, tmp_path, device):
    _, ds, run = copy
    assert_one_line_error(run_cli("evaluate", run, "--device", device), f"--device {device}: torch sees no GPU",
                          "CUDA_VISIBLE_DEVICES")
    res = run_cli("train", ds, "-o", tmp_path / "new", "--device", device, *MF)
    assert_one_line_error(res, f"--device {device}: torch sees no GPU")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0"])
def test_malformed_device_names_are_usage_errors(copy, bad):
    _, _, run = copy
    res = run_cli("evaluate", run, "--device", bad)
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert "Invalid value for '--device'" in res.stderr and "cuda:N" in res.stderr


def test_cuda_n_is_accepted_where_gpu_n_exists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(CmlError, match=r"--device cuda:2: torch sees 2 GPUs here \(cuda:0 \.\. cuda:1; "
                                       r"CUDA_VISIBLE_DEVICES '2,5'\)"):
        resolve_device("cuda:2")
