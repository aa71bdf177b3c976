import os
import pickle
import subprocess

import numpy as np
import pytest
import scipy.sparse as sp

from cml_dgl.data import safe_pickle
from cml_dgl.errors import CmlError


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _PopenCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


class _EvalCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_scipy_and_plain_objects_round_trip(tmp_path, protocol):
    m = sp.random(5, 7, density=0.4, format="csr", random_state=0, dtype=np.float64)
    m.data = (m.data * 1e9).astype(np.int64)
    objs = {
        "csr": m,
        "coo": m.tocoo(),
        "csc": m.tocsc(),
        "list": [3, None, np.int64(4), None],
        "array": np.arange(6, dtype=np.int64).reshape(2, 3),
        "scalar": np.float32(1.5),
    }
    for name, obj in objs.items():
        path = tmp_path / f"{name}_{protocol}"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        back = safe_pickle.restricted_load(path)
        if sp.issparse(obj):
            assert back.format == obj.format
            assert (back != obj).nnz == 0
            assert back.dtype == obj.dtype
        elif isinstance(obj, np.ndarray):
            np.testing.assert_array_equal(back, obj)
            assert back.dtype == obj.dtype
        else:
            assert back == obj


@pytest.mark.parametrize("payload", [_RunsCommand, _PopenCommand, _EvalCommand])
def test_pickle_that_would_run_code_is_refused_before_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "trn_buy"
    path.write_bytes(pickle.dumps(payload(marker)))
    with pytest.raises(CmlError, match=r"trn_buy: refused to unpickle: it references "
                                       r"(?:(?:posix|nt|os)\.system|subprocess\.Popen|builtins\.eval)"):
        safe_pickle.restricted_load(path)
    assert not marker.exists(), "the pickled command must not have run"


def test_malicious_object_nested_inside_an_allowed_container_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "tst_int"
    path.write_bytes(pickle.dumps([1, None, _RunsCommand(marker)]))
    with pytest.raises(CmlError, match="refused"):
        safe_pickle.restricted_load(path)
    assert not marker.exists()


def test_corrupt_truncated_and_empty_files_are_clean_errors(tmp_path):
    good = pickle.dumps(np.arange(100))
    (tmp_path / "trunc").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage").write_bytes(b"this is not a pickle at all")
    (tmp_path / "empty").write_bytes(b"")
    for name, pattern in (("trunc", "not a readable pickle"), ("garbage", "not a readable pickle"),
                          ("empty", "empty file")):
        with pytest.raises(CmlError, match=f"{name}: {pattern}"):
            safe_pickle.restricted_load(tmp_path / name)
    with pytest.raises(CmlError, match="no such file"):
        safe_pickle.restricted_load(tmp_path / "absent")


def test_allowlist_holds_no_callable_that_reaches_the_system():
    modules = {m for m, _ in safe_pickle.ALLOWED}
    assert not modules & {"os", "posix", "nt", "subprocess", "sys", "importlib", "shutil", "io"}
    names = {n for _, n in safe_pickle.ALLOWED}
    assert not names & {"eval", "exec", "getattr", "__import__", "open", "compile", "system", "apply"}
