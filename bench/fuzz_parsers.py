"""Fuzz the raw-log parsers through the real CLI: ``cml preprocess SOURCE FILE -o OUT``.

Hypothesis draws garbled logs for ``taobao``, ``ijcai15``, ``retailrocket`` and ``csv``: mostly
well-formed rows with a few bad fields (huge, negative, fractional, empty, non-ASCII or text ids,
times and behaviors), missing and extra fields, wrong delimiters, permuted / partial / BOM-prefixed
/ absent headers, a header only, Windows and old-Mac line ends, Latin-1 text, stray NUL and
non-UTF-8 bytes, truncated files, random bytes, and gzip (whole or truncated); plus the
preprocess options that change the path taken (``--negatives``, ``--min-purchases``,
``--no-valid``, ``--block-bytes``). Every case must end in exactly one of

* ``valid``: exit code 0 and an output folder that :func:`cml_dgl.data.dataset.load_dataset` reads
  (checksums, shapes, id ranges) with at least one test user;
* ``refused``: exit code 2, one ``error: ...`` line on stderr, no traceback, no output folder;

and never leave a ``.OUT.tmp-*`` sibling. Anything else is ``crashed``.

    .venv/bin/python bench/fuzz_parsers.py --examples 1000 [--seed 0] [--parsers taobao,csv]

prints one JSON object: per parser the cases tried and their outcomes, and the first crashes.
``tests/test_reliability_fuzz.py`` runs the same strategies with fewer examples.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed as hseed, settings
from hypothesis import strategies as st

PARSERS = ("taobao", "ijcai15", "retailrocket", "csv")


@dataclass(frozen=True)
class Layout:
    columns: tuple[str, ...]
    header: bool
    roles: dict[str, str]  # column -> user / item / behavior / time / other
    behaviors: tuple[str, ...]  # raw behavior values, target last
    options: tuple[str, ...] = ()


LAYOUTS = {
    "taobao": Layout(("user_id", "item_id", "category_id", "behavior_type", "timestamp"), False,
                     {"user_id": "user", "item_id": "item", "behavior_type": "behavior", "timestamp": "time"},
                     ("pv", "fav", "cart", "buy")),
    "ijcai15": Layout(("user_id", "item_id", "cat_id", "seller_id", "brand_id", "time_stamp", "action_type"),
                      True, {"user_id": "user", "item_id": "item", "action_type": "behavior",
                             "time_stamp": "time"}, ("0", "3", "1", "2")),
    "retailrocket": Layout(("timestamp", "visitorid", "event", "itemid", "transactionid"), True,
                           {"visitorid": "user", "itemid": "item", "event": "behavior", "timestamp": "time"},
                           ("view", "addtocart", "transaction")),
    "csv": Layout(("user", "item", "behavior", "timestamp"), True,
                  {"user": "user", "item": "item", "behavior": "behavior", "timestamp": "time"},
                  ("view", "cart", "buy"), ("--behaviors", "view,cart,buy")),
}

WEIRD_NUMBERS = ["", " ", "-1", "-7", "0", "+3", "007", "1.0", "2.5", "1e3", "-0", "nan", "inf", "NaN",
                 "9223372036854775807", "9223372036854775808", "-9223372036854775809",
                 "99999999999999999999999999", "0x1F", "١٢", "3 ", "\"4\"", "'5'", "abc", "ü", "None",
                 "2017-11-25", "1,5", "\t2", "\x00", "𝟘"]


def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy, bad_in_20: int = 1) -> st.SearchStrategy:
    return st.integers(0, 19).flatmap(lambda k: bad if k < bad_in_20 else good)


def _weird_text() -> st.SearchStrategy:
    return st.one_of(st.sampled_from(WEIRD_NUMBERS), st.text(max_size=6))


def _values(layout: Layout, bad_in_20: int) -> dict[str, st.SearchStrategy]:
    """Field strategies; each value is a bad one with probability ``bad_in_20`` / 20."""
    ids = st.integers(0, 6).map(str)
    target = layout.behaviors[-1]
    behavior = st.one_of(st.just(target), st.sampled_from(layout.behaviors))
    bad_behavior = st.one_of(st.sampled_from(["", "BUY", "buy ", "4", "-1", "click", "transaction\r",
                                              "view,"]), st.text(max_size=4))
    return {
        "user": _mostly(ids, _weird_text(), bad_in_20),
        "item": _mostly(ids, _weird_text(), bad_in_20),
        "behavior": _mostly(behavior, bad_behavior, bad_in_20),
        "time": _mostly(st.integers(1_511_000_000, 1_511_000_050).map(str), _weird_text(), bad_in_20),
        "other": _mostly(st.integers(0, 99).map(str), _weird_text(), bad_in_20),
    }


@st.composite
def raw_log(draw: st.DrawFn, parser: str) -> dict[str, Any]:
    """One fuzz case: file bytes, file suffix and extra CLI options."""
    lay = LAYOUTS[parser]
    noise = draw(st.sampled_from([0, 0, 0, 1, 2]))  # bad values per 20 (0: well-formed rows)
    values = _values(lay, noise)
    cols = list(lay.columns)
    header_kind = "none"
    if lay.header:
        header_kind = draw(_mostly(st.just("plain"), st.sampled_from(
            ["permuted", "extra", "missing", "bom", "none", "upper", "spaces"]), 4))
        if header_kind == "permuted":
            cols = draw(st.permutations(cols))
        elif header_kind == "extra":
            cols = cols + ["note"]
        elif header_kind == "missing":
            cols.remove(draw(st.sampled_from(cols)))
    n_rows = draw(st.integers(0, 30) if draw(st.integers(0, 9)) == 0 else st.integers(5, 30))
    delim = draw(_mostly(st.just(","), st.sampled_from([";", "\t", "|", " ", ", "]), 2))
    rows = []
    for _ in range(n_rows):
        fields = [draw(values[lay.roles.get(c, "other")]) for c in cols]
        shape = draw(_mostly(st.just("ok"), st.sampled_from(["drop", "extra", "empty", "delim"]),
                             min(noise, 1)))
        if shape == "drop" and fields:
            del fields[draw(st.integers(0, len(fields) - 1))]
        elif shape == "extra":
            fields.append(draw(values["other"]))
        elif shape == "empty":
            fields = []
        rows.append((";" if shape == "delim" else delim).join(fields))
    lines = rows
    if lay.header and header_kind != "none":
        head = delim.join(cols)
        if header_kind == "upper":
            head = head.upper()
        elif header_kind == "spaces":
            head = head.replace(delim, delim + " ")
        lines = [("\ufeff" if header_kind == "bom" else "") + head] + rows
    eol = draw(_mostly(st.just("\n"), st.sampled_from(["\r\n", "\r", "mixed", "\n\n"]), 4))
    if eol == "mixed":
        text = "".join(ln + draw(st.sampled_from(["\n", "\r\n"])) for ln in lines)
    else:
        text = eol.join(lines) + (eol if draw(st.booleans()) else "")
    data = text.encode("latin-1", "replace") if draw(st.integers(0, 19)) == 0 else text.encode("utf-8")
    mutation = draw(_mostly(st.just("none"), st.sampled_from(
        ["random", "bad-utf8", "nul", "truncate", "gzip", "gzip-truncated"]), 4))
    suffix = ".csv"
    if mutation == "random":
        data = draw(st.binary(max_size=300))
    elif mutation == "bad-utf8" and data:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + data[at:]
    elif mutation == "nul" and data:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\x00" + data[at:]
    elif mutation == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif mutation.startswith("gzip"):
        suffix = ".csv.gz"
        data = gzip.compress(data, mtime=0)
        if mutation == "gzip-truncated":
            data = data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    options = list(lay.options)
    options += ["--negatives", str(draw(st.sampled_from([1, 1, 2, 3, 99])))]
    mp = draw(st.sampled_from([None, None, 0, 1, 2]))
    if mp is not None:
        options += ["--min-purchases", str(mp)]
    if draw(st.integers(0, 4)) == 0:
        options.append("--no-valid")
    if draw(st.integers(0, 4)) == 0:
        options += ["--block-bytes", "1024"]
    return {"data": data, "suffix": suffix, "options": options, "mutation": mutation, "header": header_kind}


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)  # refusal messages, file and numbers blanked


def _reason(err: str) -> str:
    text = err.split(": ", 2)[-1] if err.count(": ") >= 2 else err
    return re.sub(r"'[^']*'|\d+", "_", text)[:90]


def classify(parser: str, case: dict[str, Any], workdir: Path) -> tuple[str, str]:
    """Run ``cml preprocess`` on the case; return (outcome, detail)."""
    from click.testing import CliRunner

    from cml_dgl_cli.main import cli
    from cml_dgl.data.dataset import load_dataset
    from cml_dgl.errors import CmlError

    src = workdir / f"log{case['suffix']}"
    src.write_bytes(case["data"])
    out = workdir / "out"
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 keeps stderr apart already
        runner = CliRunner()
    res = runner.invoke(cli, ["preprocess", parser, str(src), "-o", str(out), "-q", *case["options"]])
    leftovers = list(workdir.glob(".out.tmp-*")) + list(workdir.glob(".out.old-*"))
    if leftovers:
        return "crashed", f"temporary siblings left: {[p.name for p in leftovers]}"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(type(res.exception), res.exception,
                                                res.exception.__traceback__)[-3:])
        return "crashed", f"{type(res.exception).__name__}: {res.exception}\n{tb}"
    err = res.stderr.strip()
    if res.exit_code == 0:
        try:
            ds = load_dataset(out)
        except CmlError as e:
            return "crashed", f"exit 0 but the dataset does not load: {e}"
        if len(ds.test) == 0 or ds.n_users < 1:
            return "crashed", f"exit 0 but the dataset has {len(ds.test)} test users"
        return "valid", ""
    if res.exit_code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err \
            and not out.exists():
        return "refused", err
    return "crashed", f"exit {res.exit_code}, out exists: {out.exists()}, stderr: {err[-500:]!r}"


def fuzz(parser: str, examples: int, *, seed: int | None = None, derandomize: bool = False,
         raise_on_crash: bool = False) -> Tally:
    """Run ``examples`` hypothesis cases for one parser; with ``raise_on_crash`` a crash fails (and
    is shrunk by hypothesis), else it is counted."""
    tally = Tally()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(case=raw_log(parser))
    def one(case: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
            outcome, detail = classify(parser, case, Path(tmp))
        tally.counts[outcome] += 1
        tally.counts["tried"] += 1
        if outcome == "refused":
            tally.reasons[_reason(detail)] += 1
        if outcome == "crashed":
            if raise_on_crash:
                raise AssertionError(f"{parser}: {detail}\ncase: {case!r}")
            if len(tally.crashes) < 5:
                tally.crashes.append({"detail": detail, "case": repr(case)[:2000]})

    if seed is not None:
        one = hseed(seed)(one)
    one()
    return tally


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=200, help="cases per parser")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    ap.add_argument("--parsers", default=",".join(PARSERS))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.common import add_threads_arg, apply_threads

    add_threads_arg(ap)
    args = ap.parse_args(argv)
    apply_threads(args.threads)
    report: dict[str, Any] = {"examples": args.examples, "seed": args.seed, "parsers": {}}
    t0 = time.perf_counter()
    for parser in args.parsers.split(","):
        if parser not in PARSERS:
            ap.error(f"unknown parser {parser!r}; choose from {PARSERS}")
        tally = fuzz(parser, args.examples, seed=args.seed)
        report["parsers"][parser] = {"tried": tally.counts["tried"], "valid": tally.counts["valid"],
                                     "refused": tally.counts["refused"], "crashed": tally.counts["crashed"],
                                     "first_crashes": tally.crashes,
                                     "top_refusals": dict(tally.reasons.most_common(8))}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2, sort_keys=True))
    return 1 if any(p["crashed"] for p in report["parsers"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
