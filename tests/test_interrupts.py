"""Ctrl-C (issue 14, point 9): SIGINT during `cml train` exits 130 and prints the --resume command;
a SIGINT inside a checkpoint write waits until the checkpoint is complete, and the resumed run
equals one never interrupted. The CML_FAULT_PAUSE hook (cml_dgl/train/faults.py) holds training
at the moment to interrupt."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cml_dgl.data.dataset import write_dataset
from cml_dgl.interrupts import deferred_sigint
from cml_dgl.train.checkpoint import load_checkpoint
from conftest import make_tiny_dataset, metrics_rows, run_cli_ok

REPO = Path(__file__).resolve().parents[1]
FAST = ["--backend", "torch", "--set", "n_layers=1", "--set", "batch_size=32", "--set", "meta_batch=8",
        "--set", "meta_samples=4", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "ds"
    write_dataset(make_tiny_dataset(n_users=16, n_items=30, seed=3), d)
    return d


def interrupt_at(args, pause, marker, sleep="2"):
    """Start `cml train ARGS`, SIGINT it once the fault hook marks ``pause``, return the result."""
    marker.unlink(missing_ok=True)  # a pause the last run reached after its SIGINT (best.pt and last.pt both pause)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CML_FAULT_")}
    env.update(CML_FAULT_PAUSE=pause, CML_FAULT_MARKER=str(marker), CML_FAULT_SLEEP=sleep,
               DGLBACKEND="pytorch", PYTHONPATH=str(REPO))
    # SIGINT must reach Python's default handler even where this test runs with it ignored
    proc = subprocess.Popen([sys.executable, "-m", "cml_dgl_cli", "train", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"never reached {pause}: rc {proc.returncode}\n{err[-3000:]}")
        time.sleep(0.05)
    marker.unlink()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, err


def test_sigint_in_a_checkpoint_write_and_mid_epoch_then_resume_equals_a_clean_run(ds_dir, tmp_path):
    clean, run = tmp_path / "clean", tmp_path / "run"
    run_cli_ok("train", ds_dir, "-o", clean, "--epochs", "4", *FAST)
    ckpt = run / "checkpoints"

    rc, err = interrupt_at([str(ds_dir), "-o", str(run), "--epochs", "4", *FAST], "ckpt:2", tmp_path / "m")
    assert rc == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"interrupted: {run} is kept and its last checkpoint holds epoch 2; continue it with: "
        f"cml train --resume {run}")
    state, info = load_checkpoint(ckpt / "last.pt")  # the write the SIGINT landed in completed
    assert info["epoch"] == 2 and load_checkpoint(ckpt / "prev.pt")[1]["epoch"] == 1
    assert not list(ckpt.glob(".*.tmp-*")), "no torn temporary file"

    rc, err = interrupt_at(["--resume", str(run), "--quiet", "--threads", "1"], "train:3", tmp_path / "m")
    assert rc == 130, err
    assert "its last checkpoint holds epoch 2" in err and f"cml train --resume {run}" in err
    assert load_checkpoint(ckpt / "last.pt")[1]["epoch"] == 2

    run_cli_ok("train", "--resume", run, "--quiet", "--threads", "1")
    assert metrics_rows(run) == metrics_rows(clean)
    a, _ = load_checkpoint(run / "checkpoints" / "best.pt")
    b, _ = load_checkpoint(clean / "checkpoints" / "best.pt")
    assert all((a["model"][k] == b["model"][k]).all() for k in a["model"])


def test_a_held_sigint_is_raised_when_the_block_ends():
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler in this process")
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("the block finished")
    assert done == ["the block finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with deferred_sigint():  # nothing held: nothing raised
        pass
