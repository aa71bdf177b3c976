"""Garbled raw logs through `cml preprocess`: a valid dataset or a one-line error, never a crash.

The strategies live in bench/fuzz_parsers.py (which runs them at larger counts and prints the
outcomes); here each parser gets 60 derandomized cases, and a crash fails with hypothesis' shrunk
example. A few crashes the fuzzer found are pinned as plain regression tests below.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cml_dgl.data.dataset import load_dataset
from conftest import run_cli as run

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fuzz_parsers", REPO / "bench" / "fuzz_parsers.py")
fuzz_parsers = sys.modules.setdefault("fuzz_parsers", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(fuzz_parsers)

EXAMPLES = 60


@pytest.mark.parametrize("parser", fuzz_parsers.PARSERS)
def test_garbled_logs_end_in_a_dataset_or_a_one_line_error(parser):
    tally = fuzz_parsers.fuzz(parser, EXAMPLES, derandomize=True, raise_on_crash=True)
    c = tally.counts
    assert c["crashed"] == 0
    assert c["tried"] == c["valid"] + c["refused"] >= EXAMPLES
    assert c["valid"] > 0 and c["refused"] > 0, f"the cases should reach both outcomes: {dict(c)}"


CLEAN = {
    "taobao": ("", ["{u},{i},7,{b},{t}"], ("pv", "fav", "cart", "buy"), []),
    "ijcai15": ("user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type",
                ["{u},{i},1,2,3,{t},{b}"], ("0", "3", "1", "2"), []),
    "retailrocket": ("timestamp,visitorid,event,itemid,transactionid", ["{t},{u},{b},{i},"],
                     ("view", "addtocart", "transaction"), []),
    "csv": ("user,item,behavior,timestamp", ["{u},{i},{b},{t}"], ("view", "cart", "buy"),
            ["--behaviors", "view,cart,buy"]),
}


def _clean_log(parser: str) -> list[str]:
    header, (row,), behaviors, _ = CLEAN[parser]
    rng = np.random.default_rng(5)
    lines = [header] if header else []
    for n in range(120):
        b = behaviors[-1] if n % 3 == 0 else behaviors[int(rng.integers(len(behaviors)))]
        lines.append(row.format(u=int(rng.integers(6)), i=int(rng.integers(150)), b=b,
                                t=1511000000 + int(rng.integers(1000)) if parser != "ijcai15" else
                                int(rng.choice([511, 612, 1111]))))
    return lines


@pytest.mark.parametrize("parser", list(CLEAN))
def test_windows_line_ends_and_a_byte_order_mark_read_like_plain_newlines(parser, tmp_path):
    lines = _clean_log(parser)
    opts = CLEAN[parser][3]
    (tmp_path / "lf.csv").write_bytes(("\n".join(lines) + "\n").encode())
    (tmp_path / "crlf.csv").write_bytes(("\ufeff" if CLEAN[parser][0] else "").encode()
                                        + ("\r\n".join(lines) + "\r\n").encode())
    for name in ("lf", "crlf"):
        res = run("preprocess", parser, tmp_path / f"{name}.csv", "-o", tmp_path / name, "-q",
                  "--negatives", "5", *opts)
        assert res.exit_code == 0, res.stderr
    a, b = load_dataset(tmp_path / "lf"), load_dataset(tmp_path / "crlf")
    for field in ("train_user", "train_item", "train_behavior", "train_time", "valid", "test",
                  "valid_negatives", "test_negatives", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@pytest.mark.parametrize("parser", ["ijcai15", "retailrocket", "csv"])
def test_header_only_and_old_mac_line_ends_are_one_line_errors(parser, tmp_path):
    header = CLEAN[parser][0]
    opts = CLEAN[parser][3]
    out = tmp_path / "out"
    (tmp_path / "head.csv").write_text(header + "\r\n")
    res = run("preprocess", parser, tmp_path / "head.csv", "-o", out, "-q", *opts)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "head.csv: no event rows" in res.stderr
    (tmp_path / "mac.csv").write_bytes("\r".join(_clean_log(parser)).encode())
    res = run("preprocess", parser, tmp_path / "mac.csv", "-o", out, "-q", *opts)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "mac.csv: line 1: expected a header line ending in \\n or \\r\\n" in res.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_bad_value_next_to_an_empty_field_gives_no_warning_lines(tmp_path):
    """pandas warned "invalid value encountered in cast" on stderr before the error line."""
    src = tmp_path / "w.csv"
    src.write_text("user,item,behavior,timestamp\n4,4,buy,2.5\n5,4,buy,\n")
    res = subprocess.run([sys.executable, "-m", "cml_dgl_cli", "preprocess", "csv", str(src), "-o",
                          str(tmp_path / "out"), "-q", "--behaviors", "view,buy"],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2
    assert res.stderr == f"error: {src}: line 2: expected an integer timestamp, got '2.5'\n"
