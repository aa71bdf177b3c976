"""Property-based fuzzing of the command line beyond the parsers: output paths and options.

Each surface runs 1,000 derandomized hypothesis cases through the real commands, in process
(Click's CliRunner), in a sandbox of tiny cml folders, user files, links and loops that is put back
to its template before every case. Every case must end in exit code 0 (the output it names exists, marked as cml's)
or exit code 2 with one ``error:`` line; never a traceback; the user's files keep their bytes; and
nothing outside the sandbox changes (checked over the whole test).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs hypothesis (in the pinned stack)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cml_dgl.data.dataset import write_dataset  # noqa: E402
from cml_dgl.outputs import MARK, folder_kind  # noqa: E402
from conftest import make_tiny_dataset, run_cli, run_cli_ok  # noqa: E402

CASES = 1000
REPO = Path(__file__).resolve().parents[1]
SENTINELS = {  # user files, relative to the sandbox root: they must keep these bytes
    "outside.txt": b"the user's own file, above the working folder\n",
    "a/sibling/notes.txt": b"notes\n",
    "a/b/log.csv": None,  # the input log (bytes set when written)
    "a/b/foreign/photo.jpg": b"\xff\xd8\xff\xe0 not really a photo",
    "a/b/file.txt": b"plain file\n",
}
CML_FOLDERS = {"ds": "dataset", "legacy_ds": "dataset", "run": "run", "emb": "export"}
OUTPUT_KIND = {"preprocess": "dataset", "export-embeddings": "export", "train": "run", "report": "report"}


def _log() -> bytes:
    rng = np.random.default_rng(11)
    lines = ["user,item,behavior,timestamp"]
    for n in range(150):
        lines.append(f"u{n % 6},i{rng.integers(25)},{['view', 'cart', 'buy'][n % 3]},{1000 + n}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The sandbox, built once: root/a/b is the working folder of every case."""
    root = tmp_path_factory.mktemp("fuzz-template") / "root"
    work = root / "a" / "b"
    (root / "a" / "sibling").mkdir(parents=True)
    (work / "foreign").mkdir(parents=True)
    SENTINELS["a/b/log.csv"] = _log()
    for rel, data in SENTINELS.items():
        (root / rel).write_bytes(data)
    write_dataset(make_tiny_dataset(n_users=12, n_items=20, seed=1), work / "ds")
    run_cli_ok("train", work / "ds", "-o", work / "run", "--model", "mf", "--epochs", "1", "--quiet",
               "--backend", "torch")
    run_cli_ok("export-embeddings", work / "run", "-o", work / "emb")
    shutil.copytree(work / "ds", work / "legacy_ds")
    (work / "legacy_ds" / MARK).unlink()
    (work / "empty").mkdir()
    (work / "loop").symlink_to("loop")
    (work / "dangling").symlink_to("nowhere")
    (work / "linkdir").symlink_to("foreign")
    return root


@pytest.fixture
def sandbox(template, tmp_path, monkeypatch):
    """Yields a function that enters the sandbox's working folder, first rebuilding the sandbox
    from the template where the previous case changed it; checks at the end that nothing outside
    the sandbox (the template, the test's other folders, the repository) changed."""
    skip = {".git", "__pycache__", ".pytest_cache"}
    before = (_files(template), _listing(tmp_path), _files(REPO, skip))
    root = tmp_path / "root"
    pristine = _files(template)

    def fresh() -> Path:
        if not root.exists():
            shutil.copytree(template, root, symlinks=True)
        for rel in _changed_entries(_files(root) ^ pristine):  # put back only what the last case changed
            target, source = root / rel, template / rel
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.exists():
                shutil.rmtree(target)
            if source.is_symlink():
                target.symlink_to(os.readlink(source))
            elif source.is_dir():
                shutil.copytree(source, target, symlinks=True)
            elif source.exists():
                shutil.copy2(source, target)
        monkeypatch.chdir(root / "a" / "b")
        return root

    yield fresh
    monkeypatch.chdir(tmp_path)
    after = (_files(template), _listing(tmp_path) - {"root"}, _files(REPO, skip))
    assert after == before, "something outside the sandbox changed"


def _changed_entries(diff: set[tuple]) -> set[str]:
    """The entries of the sandbox's folders (root, a, a/b) under which ``diff`` lies."""
    out = set()
    for rel, *_ in diff:
        parts = Path(rel).parts
        depth = 3 if parts[:2] == ("a", "b") else 2 if parts[:1] == ("a",) else 1
        out.add(str(Path(*parts[:depth])) if len(parts) >= depth else str(Path(*parts)))
    return {r for r in out if r not in ("a", "a/b")}


def _files(folder: Path, skip: set[str] = frozenset()) -> set[tuple]:
    """What a case may change: every entry's path and type, and each file's size and time
    (folders named in ``skip`` are not entered)."""
    out = set()
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in dirs + files:
            p = Path(dirpath) / name
            st_ = p.lstat()
            is_file = not (os.path.isdir(p) and not p.is_symlink())
            out.add((str(p.relative_to(folder)), st_.st_mode >> 12,
                     st_.st_size if is_file else 0, st_.st_mtime_ns if is_file else 0))
    return out


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---------------------------------------------------------------------------------------- paths

NAMES = ["ds", "legacy_ds", "run", "emb", "foreign", "file.txt", "log.csv", "loop", "dangling",
         "linkdir", "empty", "new", "new2", "sub", ".", "..", "a b", "ünï", "-", "--x", "x" * 300,
         "y" * 255, "checkpoints", "photo.jpg", ".cml-output", "meta.json"]
FIXED = ["/proc/cml-fuzz", "/dev/null/x", "/sys/cml-fuzz", "", "/"]


@st.composite
def out_paths(draw) -> str:
    """A path that stays inside the sandbox (at most two levels above the working folder), or one
    of a few fixed paths that cannot be written."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.sampled_from(FIXED))
    parts, depth = [], 0
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(NAMES))
        if name == "..":
            if depth <= -2:
                continue
            depth -= 1
        elif name != ".":
            depth += 1
        parts.append(name)
    path = "/".join(parts) or "."
    if draw(st.booleans()) and draw(st.booleans()):
        path = str(Path.cwd() / path)  # absolute, still inside the sandbox
    if draw(st.integers(0, 9)) == 0:
        path += "/"
    return path


@st.composite
def write_commands(draw) -> list[str]:
    # weights: a successful report draws PNGs (slow), so it is drawn rarely
    command = draw(st.sampled_from(["preprocess"] * 48 + ["export-embeddings"] * 20 + ["train"] * 10 + ["report"]))
    out = draw(out_paths())
    flags = ["--overwrite"] if draw(st.booleans()) and command != "report" else []
    if command == "preprocess":
        source = draw(st.sampled_from(["log.csv", "ds/train_user.npy", "linkdir/photo.jpg"]))
        return ["preprocess", "csv", source, "-o", out, "-q", "--behaviors", "view,cart,buy",
                "--negatives", "3", *flags]
    if command == "export-embeddings":
        return ["export-embeddings", draw(st.sampled_from(["run", "ds", "emb"])), "-o", out, *flags]
    if command == "train":
        return ["train", draw(st.sampled_from(["ds", "legacy_ds", "run"])), "-o", out, "--model", "pop",
                "--backend", "torch", "--quiet", *flags]
    return ["report", draw(st.sampled_from(["run", "ds"])), "--out", out]


def _check(res, args: list[str], root: Path) -> None:
    """The invariants every case keeps."""
    shown = f"cml {' '.join(map(repr, args))}: exit {res.exit_code}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert res.exit_code in (0, 2), shown
    assert res.exception is None or isinstance(res.exception, SystemExit), (shown, repr(res.exception))
    assert "Traceback" not in res.stderr + res.stdout, shown
    if res.exit_code == 2:  # one line as a terminal shows it: a progress bar erases itself with \r
        err = res.stderr.strip()
        assert "\n" not in err and err.split("\r")[-1].startswith("error: "), shown
    for rel, data in SENTINELS.items():
        assert (root / rel).read_bytes() == data, (rel, shown)
    for name, kind in CML_FOLDERS.items():  # a cml folder may be replaced, by one of its own kind only
        assert folder_kind(root / "a" / "b" / name) == kind, (name, shown)


@settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(args=write_commands())
def test_fuzzed_output_paths(sandbox, args):
    root = sandbox()
    res = run_cli(*args)
    _check(res, args, root)
    if res.exit_code == 0:
        out = Path(args[args.index("--out" if "--out" in args else "-o") + 1])
        kind = folder_kind(out)
        assert kind in (OUTPUT_KIND[args[0]], "run"), (args, kind)
        assert out.resolve().is_relative_to(root.resolve()), (args, "wrote outside the sandbox")


# ---------------------------------------------------------------------------------------- options

PATHS = ["run", "ds", "legacy_ds", "emb", "file.txt", "log.csv", "missing", "loop", "dangling",
         "empty", "foreign", "-", "", "/proc/cml-fuzz", "run/checkpoints/prev.pt",
         "run/checkpoints/last.pt", "emb/users.npy"]
WORDS = ["", " ", "0", "-1", "1", "2", "3", "10", "99999999999999999999", "-99999999999999999999",
         "1e3", "nan", "inf", "x", "view,cart,buy", "buy", "a,a", ",", "10,20", "0,5", "1,,2", "é",
         "best", "last", "prev", "epoch9", "true", "null", "[1]", "{a: 1}", "--", "-o"]
INTS = ["-5", "-1", "0", "1", "2", "3", "7", "40", "1024", "99999999999", "x", "", "1.5"]


def _value(draw, choices: list[str]) -> str:
    """Mostly a value of the option's own kind, sometimes any word."""
    return draw(st.sampled_from(WORDS)) if draw(st.integers(0, 3)) == 0 else draw(st.sampled_from(choices))


OPTIONS = {
    # option: value choices (None: a flag)
    "preprocess": {"--behaviors": ["view,cart,buy", "view,buy", "buy", "a,a"], "--min-purchases": INTS,
                   "--min-user-interactions": INTS, "--min-item-interactions": INTS, "--no-valid": None,
                   "--negatives": ["1", "3", "5", "19", "0", "-1", "x"], "--seed": INTS,
                   "--block-bytes": ["1024", "1023", "4096", "0", "x"], "--overwrite": None, "-q": None},
    "info": {"--json": None},
    "train": {"--model": ["pop", "pop-target", "mf", "nope"], "--epochs": ["0", "1", "-1", "x"],
              "--variant": ["full", "no-cl", "no-meta", "no-mke", "bogus"], "--patience": INTS,
              "--seed": INTS, "--backend": ["auto", "torch", "dgl", "x"], "--device": ["cpu", "auto", "x"],
              "--monitor": ["valid", "test", "x"], "--preset": ["demo", "official", "retailrocket", "x"],
              "--config": PATHS, "--resume": PATHS, "--overwrite": None, "--quiet": None,
              "-o": PATHS + ["new-run"]},
    "evaluate": {"--checkpoint": ["best", "last", "prev"] + PATHS, "--split": ["test", "valid", "x"],
                 "--protocol": ["sampled", "full", "both", "x"], "-k": ["10", "5,10", "0", "-1", "1,,2", "x"],
                 "--mask": ["target", "all", "x"], "--tie-rule": ["expected", "random", "pessimistic", "optimistic", "x"],
                 "--dataset": PATHS, "--device": ["cpu", "x"], "--json": None, "-q": None},
    "export-embeddings": {"-o": PATHS + ["new-emb"], "--format": ["npy", "csv", "parquet", "x"],
                          "--per-behavior": None, "--checkpoint": ["best", "last", "prev"] + PATHS,
                          "--dataset": PATHS, "--overwrite": None},
    "recommend": {"--user": ["100", "101", "111", "99", "x", "", "-1", "99999999999999999999"],
                  "-k": INTS, "--include-purchased": None, "--checkpoint": ["best", "last", "prev"] + PATHS,
                  "--dataset": PATHS, "--json": None},
}
POSITIONAL = {
    "preprocess": lambda draw: [draw(st.sampled_from(["csv"] * 4 + ["taobao", "retailrocket", "ijcai15",
                                                                    "cml-pickle", "tmall", "CSV", "x"])),
                                draw(st.sampled_from(["log.csv"] * 8 + PATHS))],
    "info": lambda draw: [draw(st.sampled_from(PATHS))],
    "train": lambda draw: [draw(st.sampled_from(PATHS))] if draw(st.booleans()) else [],
    "evaluate": lambda draw: [draw(st.sampled_from(["run"] * 8 + PATHS))],
    "export-embeddings": lambda draw: [draw(st.sampled_from(["run"] * 8 + PATHS))],
    "recommend": lambda draw: [draw(st.sampled_from(["run"] * 8 + PATHS))],
}


@st.composite
def option_commands(draw) -> list[str]:
    command = draw(st.sampled_from(list(OPTIONS)))
    args = [command, *POSITIONAL[command](draw)]
    table = OPTIONS[command]
    for name in draw(st.lists(st.sampled_from(sorted(table)), max_size=6)):
        args.append(name)
        if table[name] is not None:
            args.append(_value(draw, table[name]))
    if command == "preprocess" and "-o" not in args:
        args += ["-o", draw(st.sampled_from(PATHS + ["new-ds"]))]
    if command == "recommend" and draw(st.integers(0, 4)):
        args += ["--user", draw(st.sampled_from(OPTIONS["recommend"]["--user"]))]
    if command == "train":  # every training here is short: a baseline, at most one epoch
        args += ["--model", draw(st.sampled_from(["pop", "mf"])), "--epochs", draw(st.sampled_from(["0", "1"]))]
    if draw(st.integers(0, 9)) == 0:  # a stray token somewhere
        args.insert(draw(st.integers(1, len(args))), draw(st.sampled_from(WORDS)))
    return args


@settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(args=option_commands())
def test_fuzzed_options(sandbox, args):
    root = sandbox()
    _check(run_cli(*args), args, root)
