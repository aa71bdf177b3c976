"""Kill-and-resume check of ``cml train``: SIGKILL at chosen moments, resume, compare with a clean run.

1. An uninterrupted reference run: ``cml train DATASET -o WORK/reference --epochs E --seed S``.
2. The same run killed with SIGKILL, resumed with ``cml train --resume RUN_DIR``, killed again ...:
   one kill per phase of ``--kills`` (default ``train,ckpt,eval``: mid-epoch, while a checkpoint's
   temporary file is complete but not yet renamed, at the start of an evaluation), each at an
   epoch drawn with ``--seed`` (non-decreasing, so that every pause is reachable). The moment is
   hit exactly through the ``CML_FAULT_PAUSE`` hook of :mod:`cml_dgl.train.faults`.
   ``--timed-kills N`` also runs a second copy killed N times after random delays (no hook: any
   moment, process start-up included), then resumed to the end and compared the same way.
   ``--corrupt-last`` flips bytes in the middle of ``checkpoints/last.pt`` before the final resume,
   which must then fall back to ``prev.pt`` and say so on stderr.
3. The final resume runs to the end. Its ``metrics.jsonl`` (without the ``seconds`` and
   ``timings`` fields), ``summary.json`` and the model tensors of ``checkpoints/best.pt`` must equal
   the reference's, and no temporary file may be left in the run directory.

    .venv/bin/python bench/kill_resume.py [--dataset DIR] [--epochs 6] [--seed 0] [--corrupt-last]
                                          [--timed-kills 2] [--workdir DIR] [--set KEY=VALUE ...]

Prints one JSON object (kills survived, each kill's phase, epoch and the epoch it resumed from,
and the comparisons); exit code 0 when the resumed run equals the reference, else 1.
Without ``--dataset`` a small synthetic dataset is generated in the work directory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FAST = ["--set", "batch_size=32", "--set", "meta_batch=8", "--set", "meta_samples=4"]
PHASES = ("train", "ckpt", "eval")


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cml_dgl_cli", "train", *args]


def _env(pause: str | None = None, marker: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CML_FAULT_")}
    env.setdefault("DGLBACKEND", "pytorch")
    if pause:
        env["CML_FAULT_PAUSE"] = pause
        env["CML_FAULT_MARKER"] = str(marker)
    return env


def _finish(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res


def _kill_at(cmd: list[str], pause: str, marker: Path, timeout: float) -> dict[str, Any]:
    """Start ``cmd`` with the pause hook set, SIGKILL it once the marker appears."""
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, env=_env(pause, marker), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise SystemExit(f"the run ended (code {proc.returncode}) before pausing at {pause}:\n"
                             f"{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"no pause at {pause} within {timeout} s")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stderr = proc.stderr.read()
    proc.stderr.close()
    return {"killed": proc.returncode == -signal.SIGKILL, "stderr": stderr}


def _kill_after(cmd: list[str], delay: float, timeout: float) -> dict[str, Any]:
    """Start ``cmd`` and SIGKILL it after ``delay`` seconds (unless it has finished by then)."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=timeout)
    stderr = proc.stderr.read()
    proc.stderr.close()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"killed": proc.returncode == -signal.SIGKILL, "stderr": stderr}


def _checkpoint_epoch(run: Path) -> int | None:
    from cml_dgl.errors import CmlError
    from cml_dgl.train.checkpoint import load_checkpoint

    for name in ("last.pt", "prev.pt"):
        try:
            return int(load_checkpoint(run / "checkpoints" / name)[1]["epoch"])
        except CmlError:
            continue
    return None


def metrics_rows(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    for r in rows:
        r.pop("seconds", None)
        r.pop("timings", None)
    return rows


def best_tensors_equal(a: Path, b: Path) -> bool:
    import torch

    from cml_dgl.train.checkpoint import load_checkpoint

    sa, _ = load_checkpoint(a / "checkpoints" / "best.pt")
    sb, _ = load_checkpoint(b / "checkpoints" / "best.pt")
    return sa["model"].keys() == sb["model"].keys() and all(
        torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


def corrupt(path: Path, rng: np.random.Generator) -> None:
    """Flip 16 bytes in the middle half of ``path`` (inside the payload, not the zip header)."""
    raw = bytearray(path.read_bytes())
    for pos in rng.integers(len(raw) // 4, 3 * len(raw) // 4, size=16):
        raw[pos] ^= 0xFF
    path.write_bytes(bytes(raw))


def plan(epochs: int, kills: list[str], seed: int, corrupt_last: bool) -> list[tuple[str, int]]:
    """(phase, epoch) per kill: phases shuffled, epochs non-decreasing; the last one >= 3 when the
    final resume must find a prev.pt to fall back on."""
    rng = np.random.default_rng(seed)
    phases = [kills[k] for k in rng.permutation(len(kills))]
    at = sorted(int(e) for e in rng.integers(1, epochs + 1, size=len(phases)))
    if corrupt_last and at and at[-1] < 3:
        at[-1] = int(rng.integers(3, epochs + 1))
    return list(zip(phases, at))


def _compare(victim: Path, ref: Path) -> dict[str, Any]:
    leftovers = sorted(str(p.relative_to(victim)) for p in victim.rglob(".*.tmp-*"))
    out = {"metrics_equal": metrics_rows(victim) == metrics_rows(ref),
           "summary_equal": json.loads((victim / "summary.json").read_text())
           == json.loads((ref / "summary.json").read_text()),
           "best_equal": best_tensors_equal(victim, ref),
           "temporary_files_left": leftovers}
    out["ok"] = bool(out["metrics_equal"] and out["summary_equal"] and out["best_equal"] and not leftovers)
    return out


def run(dataset: Path, work: Path, epochs: int, seed: int, kills: list[str], timed_kills: int,
        corrupt_last: bool, extra: list[str], timeout: float = 300.0) -> dict[str, Any]:
    common = ["--epochs", str(epochs), "--seed", str(seed), "--quiet", *FAST, *extra]
    ref = work / "reference"
    t0 = time.perf_counter()
    _finish(_cmd(str(dataset), "-o", str(ref), "--overwrite", *common), timeout)
    ref_seconds = time.perf_counter() - t0

    def start_or_resume(victim: Path, first: bool) -> list[str]:
        if first or not (victim / "config.yaml").is_file():
            return _cmd(str(dataset), "-o", str(victim), "--overwrite", *common)
        return _cmd(str(dataset), "--resume", str(victim), "--quiet")

    def final_resume(victim: Path) -> dict[str, Any]:
        before = _checkpoint_epoch(victim)
        final = _finish(start_or_resume(victim, False), timeout)
        return {"resumed_from": before, "warnings": _warnings(final.stderr)}

    # hooked kills: the run is SIGKILLed at exactly the planned moments
    victim = work / "resumed"
    marker = work / "paused"
    report: dict[str, Any] = {"dataset": str(dataset), "epochs": epochs, "seed": seed, "kills": []}
    for n, (phase, epoch) in enumerate(plan(epochs, kills, seed, corrupt_last)):
        before = _checkpoint_epoch(victim) if n else None
        out = _kill_at(start_or_resume(victim, n == 0), f"{phase}:{epoch}", marker, timeout)
        report["kills"].append({"phase": phase, "epoch": epoch, "resumed_from": before,
                                "killed": out["killed"], "warnings": _warnings(out["stderr"])})
    if corrupt_last:
        last = victim / "checkpoints" / "last.pt"
        report["corrupt_last"] = {"applied": last.is_file() and (victim / "checkpoints" / "prev.pt").is_file()}
        if report["corrupt_last"]["applied"]:
            corrupt(last, np.random.default_rng(seed + 2))
    report["final_resume"] = final_resume(victim)
    if corrupt_last:
        report["corrupt_last"]["reported"] = any("last.pt" in w and "prev.pt" in w
                                                 for w in report["final_resume"]["warnings"])
    report.update(_compare(victim, ref))
    report["ok"] = report["ok"] and report.get("corrupt_last", {}).get("reported", True)

    # timed kills: another run, SIGKILLed after random delays (any moment, startup included)
    if timed_kills:
        victim = work / "timed"
        rng = np.random.default_rng(seed + 1)
        report["timed_kills"] = []
        for n in range(timed_kills):
            delay = float(rng.uniform(0.5, max(ref_seconds, 1.0)))
            before = _checkpoint_epoch(victim) if n else None
            out = _kill_after(start_or_resume(victim, n == 0), delay, timeout)
            report["timed_kills"].append({"after_s": round(delay, 2), "resumed_from": before,
                                          "killed": out["killed"], "warnings": _warnings(out["stderr"])})
        final = final_resume(victim)
        report["timed"] = dict(_compare(victim, ref), final_resume=final)
        report["ok"] = report["ok"] and report["timed"]["ok"]
    report["kills_survived"] = sum(k["killed"] for k in report["kills"] + report.get("timed_kills", []))
    report.update(reference_seconds=round(ref_seconds, 2), seconds=round(time.perf_counter() - t0, 2))
    return report


def _warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith(("warning:", "error:", "Traceback"))]


def _default_dataset(work: Path) -> Path:
    from cml_dgl.data.dataset import write_dataset
    from cml_dgl.data.synth import synthetic_dataset

    out = work / "dataset"
    if not out.exists():
        write_dataset(synthetic_dataset(n_users=80, n_items=220, n_edges=2500, seed=0), out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=None, help="dataset folder (default: a synthetic one)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the runs go (default: a temp dir)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0, help="seed of the training runs and of the kill plan")
    ap.add_argument("--kills", default=",".join(PHASES), help="phases to kill in, comma-separated")
    ap.add_argument("--timed-kills", type=int, default=0, help="extra kills at random wall-clock moments")
    ap.add_argument("--corrupt-last", action="store_true", help="corrupt last.pt before the final resume")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="extra `cml train --set` overrides")
    ap.add_argument("--backend", default=None, choices=["auto", "dgl", "torch"])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.common import add_threads_arg, apply_threads

    add_threads_arg(ap)
    args = ap.parse_args(argv)
    apply_threads(args.threads)
    kills = [k for k in args.kills.split(",") if k]
    if any(k not in PHASES for k in kills) or args.epochs < 3:
        ap.error(f"--kills takes phases from {PHASES}; --epochs must be >= 3")
    extra = [x for s in args.sets for x in ("--set", s)]
    if args.backend:
        extra += ["--backend", args.backend]
    with tempfile.TemporaryDirectory(prefix="kill_resume-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        dataset = args.dataset or _default_dataset(work)
        report = run(dataset, work, args.epochs, args.seed, kills, args.timed_kills, args.corrupt_last, extra)
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
