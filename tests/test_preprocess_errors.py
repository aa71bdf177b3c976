"""Bad input to `cml preprocess`: one-line error naming file and line, exit code 2, no OUTDIR."""

import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import run_cli, write_published_split

GOOD_TAOBAO = ["1,10,5,pv,1511544070", "1,11,5,buy,1511544071", "1,12,5,buy,1511544072",
               "1,13,5,buy,1511544073", "2,10,5,cart,1511544074"]
IJCAI_HEADER = "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type"


def run(*args):
    return run_cli(*args, catch_exceptions=False)


def assert_clean_failure(res, out: Path, *fragments: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr)
    err = res.stderr.strip()
    assert "\n" not in err, f"expected one line, got {err!r}"
    assert err.startswith("error: ") and "Traceback" not in err
    for frag in fragments:
        assert frag in err, f"{frag!r} not in {err!r}"
    assert not out.exists(), "no OUTDIR may be left behind"
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "no temporary sibling left behind"
    return err


def taobao_with(tmp_path, line_no: int, bad: str) -> Path:
    lines = list(GOOD_TAOBAO)
    lines.insert(line_no - 1, bad)
    path = tmp_path / "UserBehavior.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("bad,expected", [
    ("1,10,5,click,1511544070", "line 3: unknown behavior_type 'click' (expected one of pv, fav, cart, buy)"),
    ("1,abc,5,pv,1511544070", "line 3: expected an integer item_id, got 'abc'"),
    ("x1,10,5,pv,1511544070", "line 3: expected an integer user_id, got 'x1'"),
    ("1,10,5,pv,2017-11-25", "line 3: expected an integer timestamp, got '2017-11-25'"),
    ("1,10.5,5,pv,1511544070", "line 3: expected an integer item_id, got '10.5'"),
    ("1,10,5,pv", "line 3: expected 5 comma-separated fields"),
    ("1,10,5,pv,1511544070,7", "line 3: expected 5 comma-separated fields"),
    ("1,10,5,pv,99999999999999999999999", "line 3: timestamp '99999999999999999999999' is an integer too large for int64"),
    ("1,,5,pv,1511544070", "line 3: expected an integer item_id, got ''"),
])
def test_bad_taobao_rows_name_file_and_line(tmp_path, bad, expected):
    src = taobao_with(tmp_path, 3, bad)
    out = tmp_path / "out"
    assert_clean_failure(run("preprocess", "taobao", src, "-o", out, "-q"), out, str(src), expected)


def test_truncated_last_line_is_reported(tmp_path):
    src = tmp_path / "UserBehavior.csv"
    src.write_text("\n".join(GOOD_TAOBAO) + "\n2,11,5,p")
    out = tmp_path / "out"
    assert_clean_failure(run("preprocess", "taobao", src, "-o", out, "-q"), out, str(src),
                         "line 6: expected 5 comma-separated fields")
    src.write_text("\n".join(GOOD_TAOBAO) + "\n2,11,5,pv")
    assert_clean_failure(run("preprocess", "taobao", src, "-o", out, "-q"), out, "line 6")


def test_error_in_a_later_block_reports_the_absolute_line(tmp_path):
    lines = [f"{u},{i},3,buy,{1511544000 + i}" for u in range(200) for i in range(5)]
    lines[777] = "7,7,3,buy,soon"
    src = tmp_path / "big.csv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert_clean_failure(run("preprocess", "taobao", src, "-o", out, "-q", "--block-bytes", "1024"),
                         out, "line 778: expected an integer timestamp, got 'soon'")


def test_missing_directory_empty_binary_and_header_only_inputs(tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(run("preprocess", "taobao", tmp_path / "nope.csv", "-o", out), out,
                         "nope.csv: no such file")
    (tmp_path / "adir").mkdir()
    assert_clean_failure(run("preprocess", "taobao", tmp_path / "adir", "-o", out), out,
                         "adir: is a directory, expected a file")
    (tmp_path / "empty.csv").write_bytes(b"")
    assert_clean_failure(run("preprocess", "taobao", tmp_path / "empty.csv", "-o", out), out,
                         "empty.csv: empty file")
    (tmp_path / "bin.csv").write_bytes(b"1,2,3,pv,4\n" + bytes(range(128, 256)) + b"\n")
    assert_clean_failure(run("preprocess", "taobao", tmp_path / "bin.csv", "-o", out, "-q"), out,
                         "bin.csv: line 2: expected UTF-8 text")
    (tmp_path / "head.csv").write_text(IJCAI_HEADER + "\n")
    assert_clean_failure(run("preprocess", "ijcai15", tmp_path / "head.csv", "-o", out, "-q"), out,
                         "head.csv: no event rows")
    (tmp_path / "blank.csv").write_text("\n\n")
    assert_clean_failure(run("preprocess", "ijcai15", tmp_path / "blank.csv", "-o", out, "-q"), out,
                         "blank.csv: line 1: expected a header")


def test_unreadable_file(tmp_path, monkeypatch):
    from cml_dgl import fsutil

    src = tmp_path / "locked.csv"
    src.write_text("\n".join(GOOD_TAOBAO) + "\n")

    def denied(path, *args, **kwargs):  # what open() raises on a file without read permission
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(fsutil, "open", denied, raising=False)  # tests run as root: chmod won't do
    out = tmp_path / "out"
    assert_clean_failure(run("preprocess", "taobao", src, "-o", out), out,
                         "locked.csv: cannot read (Permission denied)")


def test_wrong_or_missing_columns(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "ij.csv").write_text("user_id,item_id,time_stamp,action\n1,2,1111,0\n")
    assert_clean_failure(run("preprocess", "ijcai15", tmp_path / "ij.csv", "-o", out, "-q"), out,
                         "ij.csv: line 1: header lacks column(s) action_type")
    (tmp_path / "rr.csv").write_text("timestamp,visitor,event,itemid\n1,2,view,3\n")
    assert_clean_failure(run("preprocess", "retailrocket", tmp_path / "rr.csv", "-o", out, "-q"), out,
                         "rr.csv: line 1: header lacks column(s) visitorid")
    (tmp_path / "tb.csv").write_text("1,10,pv,1511544070\n1,11,buy,1511544071\n")
    assert_clean_failure(run("preprocess", "taobao", tmp_path / "tb.csv", "-o", out, "-q"), out,
                         "tb.csv: line 1: expected 5 comma-separated fields")
    (tmp_path / "ij2.csv").write_text(IJCAI_HEADER + "\n1,2,3,4,5,1111,0\n1,2,3,4,5,1112,7\n")
    assert_clean_failure(run("preprocess", "ijcai15", tmp_path / "ij2.csv", "-o", out, "-q"), out,
                         "ij2.csv: line 3: unknown action_type '7' (expected one of 0, 3, 1, 2)")
    (tmp_path / "shop.csv").write_text("user,item,behavior,timestamp\nu,i,view,1\n")
    assert_clean_failure(run("preprocess", "csv", tmp_path / "shop.csv", "-o", out, "-q"), out,
                         "needs --behaviors")
    assert_clean_failure(run("preprocess", "csv", tmp_path / "shop.csv", "-o", out, "-q",
                             "--behaviors", "look,buy"), out,
                         "shop.csv: line 2: unknown behavior 'view' (expected one of look, buy)")


def test_truncated_gzip(tmp_path):
    blob = gzip.compress(("\n".join(GOOD_TAOBAO * 50) + "\n").encode())
    src = tmp_path / "ub.csv.gz"
    src.write_bytes(blob[: len(blob) // 2])
    out = tmp_path / "out"
    assert_clean_failure(run("preprocess", "taobao", src, "-o", out, "-q"), out, "ub.csv.gz: cannot read")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cml_pickle_with_code_is_refused_and_never_runs(tmp_path):
    folder = tmp_path / "split"
    write_published_split(folder)
    marker = tmp_path / "pwned"
    (folder / "trn_cart").write_bytes(pickle.dumps(_Evil(marker)))
    out = tmp_path / "out"
    err = assert_clean_failure(run("preprocess", "cml-pickle", folder, "-o", out, "-q", "--negatives", "1"),
                               out, str(folder / "trn_cart"), "refused to unpickle")
    assert "system" in err
    assert not marker.exists()


def _broken_csr():
    m = sp.csr_matrix(np.array([[0, 5, 6, 0], [7, 0, 0, 8]], dtype=np.int64))
    m.indices[0] = 50  # a column outside the 4 of the matrix
    return m


@pytest.mark.parametrize("name,payload,expected", [
    ("trn_view", _broken_csr(), "inconsistent sparse matrix"),
    ("trn_buy", {"not": "a matrix"}, "expected a pickled scipy.sparse users x items matrix, got dict"),
    ("trn_buy", b"\x80\x04truncated", "not a readable pickle"),
    ("tst_int", [3, "x"], "entry 1: expected None or an integer item id, got 'x'"),
    ("tst_int", [3, None, 1], "3 entries, but the trn_ matrices have 2 users"),
    ("tst_int", [9, None], "entry 0: item 9 is outside the trn_ matrices' 4 items"),
    ("meta_multi_single_beh_user_index_shuffle", np.array([0, 5]), "meta user ids must lie in [0, 2)"),
])
def test_cml_pickle_wrong_contents(tmp_path, name, payload, expected):
    folder = tmp_path / "split"
    write_published_split(folder)
    data = payload if isinstance(payload, bytes) else pickle.dumps(payload)
    (folder / name).write_bytes(data)
    out = tmp_path / "out"
    assert_clean_failure(run("preprocess", "cml-pickle", folder, "-o", out, "-q", "--negatives", "1"),
                         out, f"{folder / name}: {expected}")


def test_cml_pickle_missing_pieces(tmp_path):
    out = tmp_path / "out"
    folder = tmp_path / "split"
    write_published_split(folder)
    (folder / "tst_int").unlink()
    assert_clean_failure(run("preprocess", "cml-pickle", folder, "-o", out), out, "tst_int: no such file")
    assert_clean_failure(run("preprocess", "cml-pickle", tmp_path / "none", "-o", out), out,
                         "none: no such folder")
    empty = tmp_path / "emptydir"
    empty.mkdir()
    assert_clean_failure(run("preprocess", "cml-pickle", empty, "-o", out), out, "no trn_<behavior> files")


def test_too_few_negative_candidates_is_a_clear_error(tmp_path):
    folder = tmp_path / "split"
    write_published_split(folder)
    out = tmp_path / "out"
    assert_clean_failure(run("preprocess", "cml-pickle", folder, "-o", out, "-q"), out,
                         str(folder), "eligible negative items", "99 are needed")


def test_bad_input_through_the_installed_command_has_no_traceback(tmp_path):
    src = taobao_with(tmp_path, 2, "1,10,5,pv,later")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", "from cml_dgl_cli.main import cli; cli()", "preprocess", "taobao",
                          str(src), "-o", str(out)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert lines == [f"error: {src}: line 2: expected an integer timestamp, got 'later'"]
    assert "Traceback" not in res.stderr
    assert not out.exists()
