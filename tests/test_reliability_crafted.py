"""Crafted files: pickles that would run code, checkpoints carrying pickled payloads, tampered
datasets. Each is refused through the CLI with one `error:` line, and no payload ever runs.
Plus a scan of the package proving every deserialisation call is the restricted kind."""

import ast
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cml_dgl.data.dataset import FORMAT_VERSION, write_dataset
from cml_dgl.train.checkpoint import FORMAT, VERSION
from conftest import make_tiny_dataset, write_published_split
from conftest import run_cli as invoke, assert_one_line_error as refused

REPO = Path(__file__).resolve().parents[1]


class Touch:
    """Unpickling this runs ``touch MARKER`` (or another way of creating it)."""

    def __init__(self, marker, how="system"):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "popen":
            return (subprocess.Popen, (["touch", self.marker],))
        if self.how == "eval":
            return (eval, (f"open({self.marker!r}, 'w')",))
        if self.how == "exec":
            return (exec, (f"open({self.marker!r}, 'w').close()",))
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dataset and a one-epoch run on it (copied by each test before tampering)."""
    root = tmp_path_factory.mktemp("crafted")
    write_dataset(make_tiny_dataset(n_users=16, n_items=30, seed=4), root / "ds")
    res = invoke("train", root / "ds", "-o", root / "run", "--epochs", "1", "--backend", "torch",
                 "--set", "n_layers=1", "--set", "batch_size=64", "--quiet")
    assert res.exit_code == 0, res.output
    return root


def copy(trained, tmp_path):
    shutil.copytree(trained / "ds", tmp_path / "ds")
    shutil.copytree(trained / "run", tmp_path / "run")
    cfg = tmp_path / "run" / "run.json"
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()), dataset=str(tmp_path / "ds"))))
    return tmp_path / "ds", tmp_path / "run"


# ------------------------------------------------------------------------------ cml-pickle folders


@pytest.mark.parametrize("target,how,nest", [
    ("trn_view", "popen", "bare"),
    ("trn_buy", "exec", "in-dict"),
    ("tst_int", "eval", "in-list"),
    ("tst_int", "system", "in-object-array"),
    ("meta_multi_single_beh_user_index_shuffle", "system", "bare"),
    ("test_mat.pkl", "popen", "bare"),
])
def test_cml_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, target, how, nest):
    folder = tmp_path / "split"
    write_published_split(folder)
    marker = tmp_path / "PWNED"
    payload = Touch(marker, how)
    obj = {"bare": payload, "in-dict": {"m": payload}, "in-list": [3, payload],
           "in-object-array": np.array([3, payload], dtype=object)}[nest]
    if target == "test_mat.pkl":
        (folder / "tst_int").unlink()  # then test_mat.pkl is read in its place
    (folder / target).write_bytes(pickle.dumps(obj, protocol=2 if nest == "bare" else 4))
    out = tmp_path / "out"
    err = refused(invoke("preprocess", "cml-pickle", folder, "-o", out, "-q", "--negatives", "1"),
                  str(folder / target), "refused to unpickle")
    assert not marker.exists(), "the pickled payload ran"
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
    assert any(name in err for name in ("system", "Popen", "eval", "exec"))


# ------------------------------------------------------------------------------ checkpoints


def _outer(state_bytes: bytes, info: dict) -> dict:
    return {"format": FORMAT, "version": VERSION, "info": json.dumps(info),
            "sha256": hashlib.sha256(state_bytes).hexdigest(),
            "state": torch.frombuffer(bytearray(state_bytes), dtype=torch.uint8)}


def _evil_checkpoints(marker: Path, info: dict) -> dict[str, bytes]:
    """Three ways to smuggle a payload into a checkpoint file."""
    plain = pickle.dumps({"format": FORMAT, "model": Touch(marker)})
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, "model": Touch(marker)}, buf)
    outer_level = buf.getvalue()
    inner = io.BytesIO()
    torch.save({"model": {"w": torch.ones(2)}, "extra": Touch(marker, "popen")}, inner)
    buf = io.BytesIO()
    torch.save(_outer(inner.getvalue(), info), buf)  # valid format and checksum, payload inside
    return {"plain-pickle": plain, "torch-save-object": outer_level, "inner-state-object": buf.getvalue()}


@pytest.mark.parametrize("kind", ["plain-pickle", "torch-save-object", "inner-state-object"])
def test_checkpoint_with_a_pickled_payload_is_refused_by_every_command(trained, tmp_path, kind, monkeypatch):
    ds, run = copy(trained, tmp_path)
    marker = tmp_path / "PWNED"
    info = json.loads(torch.load(run / "checkpoints" / "best.pt", weights_only=True)["info"])
    blob = _evil_checkpoints(marker, info)[kind]
    for name in ("best.pt", "last.pt", "prev.pt"):
        (run / "checkpoints" / name).write_bytes(blob)
    (tmp_path / "evil.pt").write_bytes(blob)
    monkeypatch.chdir(tmp_path)
    commands = [
        ("evaluate", run),
        ("evaluate", run, "--checkpoint", tmp_path / "evil.pt"),
        ("export-embeddings", run, "-o", tmp_path / "emb"),
        ("recommend", run, "--user", "100"),
        ("train", "--resume", run, "--epochs", "2", "--quiet"),
    ]
    for cmd in commands:
        err = refused(invoke(*cmd))
        assert ".pt" in err and ("refused" in err or "not a weights-only" in err
                                 or "no usable checkpoint" in err), err
        assert not marker.exists(), f"{cmd}: the payload ran"
    assert not (tmp_path / "emb").exists()
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1, "the refused resume trained nothing"


# ------------------------------------------------------------------------------ datasets


def _rehash(ds: Path, name: str) -> None:
    meta = json.loads((ds / "meta.json").read_text())
    meta["files"][name]["sha256"] = hashlib.sha256((ds / name).read_bytes()).hexdigest()
    (ds / "meta.json").write_text(json.dumps(meta))


def _edit_meta(ds: Path, **changes) -> None:
    meta = json.loads((ds / "meta.json").read_text())
    meta.update(changes)
    (ds / "meta.json").write_text(json.dumps(meta))


def tamper(ds: Path, how: str, marker: Path) -> str:
    """Apply one tampering; return the fragment the error must contain."""
    f = ds / "train_item.npy"
    if how == "truncated":
        f.write_bytes(f.read_bytes()[:-40])
        return "train_item.npy: checksum does not match"
    if how == "truncated-rehashed":
        f.write_bytes(f.read_bytes()[:-40])
        _rehash(ds, "train_item.npy")
        return "train_item.npy: not a readable .npy array"
    if how == "shape-rehashed":
        np.save(f, np.load(f)[:-3])
        _rehash(ds, "train_item.npy")
        return "train_item.npy: shape"
    if how == "object-array-payload":
        np.save(f, np.array([1, Touch(marker)], dtype=object), allow_pickle=True)
        _rehash(ds, "train_item.npy")
        return "train_item.npy: not a readable .npy array"
    if how == "wrong-checksum":
        meta = json.loads((ds / "meta.json").read_text())
        meta["files"]["test.npy"]["sha256"] = "0" * 64
        (ds / "meta.json").write_text(json.dumps(meta))
        return "test.npy: checksum does not match"
    if how == "format-version":
        _edit_meta(ds, format_version=FORMAT_VERSION + 1)
        return f"format_version {FORMAT_VERSION + 1} is not supported"
    if how == "count-not-a-number":
        _edit_meta(ds, n_users="16; rm -rf /")
        return "field 'n_users' must be a count"
    if how == "files-not-a-mapping":
        _edit_meta(ds, files=["train_user.npy"])
        return "field 'files' must map"
    if how == "ids-out-of-range":
        _edit_meta(ds, n_items=5)
        return "id maps have"
    if how == "meta-not-json":
        (ds / "meta.json").write_bytes(b"\x80\x04\x95 not json")
        return "meta.json: not valid JSON"
    raise AssertionError(how)


TAMPERINGS = ["truncated", "truncated-rehashed", "shape-rehashed", "object-array-payload", "wrong-checksum",
              "format-version", "count-not-a-number", "files-not-a-mapping", "ids-out-of-range",
              "meta-not-json"]


@pytest.mark.parametrize("how", TAMPERINGS)
def test_tampered_dataset_is_refused_by_info_train_and_evaluate(trained, tmp_path, how):
    ds, run = copy(trained, tmp_path)
    marker = tmp_path / "PWNED"
    expected = tamper(ds, how, marker)
    refused(invoke("info", ds), str(ds), expected)
    refused(invoke("train", ds, "-o", tmp_path / "new", "--epochs", "1", "--quiet"), expected)
    assert not (tmp_path / "new").exists(), "nothing was started"
    refused(invoke("evaluate", run, "--dataset", ds), expected)
    refused(invoke("evaluate", run), expected)  # the run's recorded dataset is the tampered one
    refused(invoke("train", "--resume", run, "--epochs", "2", "--quiet"), expected)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert not marker.exists()


# ------------------------------------------------------------------------------ the package


RISKY = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("torch", "load"),
         ("np", "load"), ("numpy", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle"),
         ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("marshal", "loads"),
         ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("shelve", "open"), ("cloudpickle", "loads")}
RESTRICTED_UNPICKLER = "cml_dgl/data/safe_pickle.py"


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return "absent"


def _safe_yaml_loaders(tree: ast.AST) -> set[str]:
    """Names of the classes of ``tree`` that derive from ``yaml.SafeLoader`` directly."""
    return {c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
            and any(isinstance(b, ast.Attribute) and isinstance(b.value, ast.Name)
                    and (b.value.id, b.attr) == ("yaml", "SafeLoader") for b in c.bases)}


def unsafe_loads(source: str, rel: str) -> list[str]:
    """Lines of ``source`` that deserialise without the restriction (see the test below)."""
    bad = []
    tree = ast.parse(source)
    safe_loaders = _safe_yaml_loaders(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in {m for m, _ in RISKY}:
            names = {(node.module, a.name) for a in node.names}
            if names & RISKY and rel != RESTRICTED_UNPICKLER:
                bad.append(f"{rel}:{node.lineno}: from {node.module} import ...")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and (node.value.id, node.attr) in RISKY:
            key = (node.value.id, node.attr)
            parent_call = next((c for c in ast.walk(tree) if isinstance(c, ast.Call) and c.func is node), None)
            if key[0] == "pickle" and rel == RESTRICTED_UNPICKLER:
                continue
            if key == ("torch", "load") and parent_call is not None \
                    and _keyword(parent_call, "weights_only") is True:
                continue
            if key in {("np", "load"), ("numpy", "load")} and parent_call is not None \
                    and _keyword(parent_call, "allow_pickle") in (False, "absent"):
                continue
            if key == ("yaml", "load") and parent_call is not None and any(
                    kw.arg == "Loader" and isinstance(kw.value, ast.Name) and kw.value.id in safe_loaders
                    for kw in parent_call.keywords):
                continue
            bad.append(f"{rel}:{node.lineno}: {key[0]}.{key[1]}")
    return sorted(bad, key=lambda b: int(b.split(":")[1]))


def test_the_scanner_sees_unrestricted_loads():
    planted = ("import pickle, torch, numpy as np, yaml\nfrom pickle import loads\n"
               "torch.load(f)\ntorch.load(f, weights_only=False)\nx = torch.load\npickle.loads(b)\n"
               "np.load(p, allow_pickle=True)\nyaml.load(t)\nclass U(pickle.Unpickler): pass\n"
               "torch.load(f, weights_only=True)\nnp.load(p)\nnp.load(p, allow_pickle=False)\n"
               "class S(yaml.SafeLoader): pass\nclass F(yaml.FullLoader): pass\n"
               "yaml.load(t, Loader=S)\nyaml.load(t, Loader=F)\n")
    assert [b.split(": ", 1)[1] for b in unsafe_loads(planted, "x.py")] == [
        "from pickle import ...", "torch.load", "torch.load", "torch.load", "pickle.loads", "np.load",
        "yaml.load", "pickle.Unpickler", "yaml.load"]


def test_no_unrestricted_deserialisation_in_the_package():
    files = sorted(p for d in ("cml_dgl", "cli") for p in (REPO / d).rglob("*.py"))
    assert len(files) > 20
    bad = [b for p in files for b in unsafe_loads(p.read_text(), p.relative_to(REPO).as_posix())]
    assert bad == [], "deserialisation without weights_only=True / the restricted unpickler:\n" + "\n".join(bad)
    text = (REPO / RESTRICTED_UNPICKLER).read_text()
    assert "class SafeUnpickler(pickle.Unpickler)" in text and "def find_class" in text
