import os
import pickle

import pytest
import torch

from cml_dgl.errors import CmlError
from cml_dgl.train.checkpoint import load_checkpoint, save_checkpoint


def test_roundtrip(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "c.pt", state, {"epoch": 3, "config": {"a": [1, 2]}})
    st, info = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(st["model"]["w"], state["model"]["w"])
    assert info == {"epoch": 3, "config": {"a": [1, 2]}}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "no temporary file left"


def test_truncated_and_altered_files_are_refused(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(1000)}, {})
    raw = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CmlError, match="t.pt"):
        load_checkpoint(tmp_path / "t.pt")
    outer = torch.load(tmp_path / "c.pt", weights_only=True)
    outer["state"][-5] ^= 1
    torch.save(outer, tmp_path / "a.pt")
    with pytest.raises(CmlError, match="checksum mismatch"):
        load_checkpoint(tmp_path / "a.pt")
    with pytest.raises(CmlError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_pickled_payload_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as f:
        pickle.dump({"format": "cml-dgl-checkpoint", "x": _Payload()}, f)
    torch.save({"model": _Payload()}, "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(CmlError, match=name):
            load_checkpoint(name)
    assert not (tmp_path / "PWNED_MARKER").exists()
