"""A run directory: ``config.yaml``, ``run.json``, ``metrics.jsonl``, ``summary.json`` and
``checkpoints/{last,prev,best}.pt``, written so that a kill at any moment leaves a resumable run.

Only the main process (rank 0) writes, renames or deletes; the others only read. Warnings go to
stderr, one line each.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from cml_dgl.data.dataset import Dataset, fingerprint_changes
from cml_dgl.errors import CmlError
from cml_dgl.fsutil import atomic_write_bytes, atomic_write_json, remove_stale_temporaries
from cml_dgl.interrupts import deferred_sigint
from cml_dgl.outputs import check_output, write_mark
from cml_dgl.train.checkpoint import load_checkpoint, save_checkpoint


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class RunDir:
    def __init__(self, path: str | os.PathLike, is_main: bool = True) -> None:
        self.path, self.is_main = Path(path), is_main

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    # ------------------------------------------------------------------ a new run
    def create(self, config_text: str, run_info: dict[str, Any], overwrite: bool) -> None:
        """Make the directory (empty, or emptied of a former run's outputs with ``overwrite``) and
        write ``config.yaml`` and ``run.json``. Only a run directory is overwritten, and only its
        own files are deleted (see :mod:`cml_dgl.outputs`)."""
        rd = self.path
        check_output(rd, "run", overwrite=overwrite)
        if rd.exists() and overwrite:
            for sub in ("metrics.jsonl", "summary.json"):
                (rd / sub).unlink(missing_ok=True)
            for f in self.ckpt_dir.glob("*.pt") if self.ckpt_dir.exists() else []:
                f.unlink()
            for d in (rd, self.ckpt_dir):
                remove_stale_temporaries(d)
        rd.mkdir(parents=True, exist_ok=True)
        write_mark(rd, "run")
        atomic_write_bytes(rd / "config.yaml", config_text.encode())
        atomic_write_json(rd / "run.json", run_info)

    def read_info(self) -> dict[str, Any]:
        """``run.json`` as a mapping; CmlError naming it when missing or not a JSON object."""
        path = self.path / "run.json"
        try:
            info = json.loads(path.read_bytes())
        except OSError as e:
            raise CmlError(f"{path}: cannot read ({e.strerror or e}); {self.path} is not a complete run directory") from None
        except ValueError:  # not UTF-8 or not JSON
            raise CmlError(f"{path}: not valid JSON (the run directory is damaged)") from None
        if not isinstance(info, dict):
            raise CmlError(f"{path}: expected a JSON object, got {type(info).__name__}")
        return info

    def check_dataset(self, ds: Dataset, allow_changed: bool = False) -> None:
        """Refuse (or, with ``allow_changed``, warn about) a dataset whose files differ from those the
        run was trained on, as recorded in run.json (runs from before the record are not checked)."""
        recorded, now = self.read_info().get("dataset_fingerprint"), ds.fingerprint()
        if not isinstance(recorded, dict) or now is None:
            return
        changes = fingerprint_changes(recorded, now)
        if not changes:
            return
        what = (f"{ds.path}: the dataset changed since {self.path} was trained ({'; '.join(changes)})")
        if not allow_changed:
            raise CmlError(f"{what}; rebuild it as it was, or pass --allow-changed-dataset to go ahead")
        if self.is_main:
            warn(f"{what}; going ahead (--allow-changed-dataset)")

    # ------------------------------------------------------------------ checkpoints
    def save(self, state: dict[str, Any], info: dict[str, Any], best: bool) -> None:
        """best.pt (when improved) first, then last.pt; the old last.pt becomes prev.pt only once
        the new one is complete. A kill at any moment leaves last.pt (or prev.pt) at an epoch from
        which a resume re-runs the later epochs exactly, and re-writes best.pt if they improve; a
        Ctrl-C waits until both files are written."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        last, prev = self.ckpt_dir / "last.pt", self.ckpt_dir / "prev.pt"

        def rotate() -> None:
            if last.exists():
                os.replace(last, prev)

        with deferred_sigint():  # a Ctrl-C here waits until last.pt is complete
            if best:
                save_checkpoint(self.ckpt_dir / "best.pt", state, info)
            save_checkpoint(last, state, info, before_rename=rotate)

    def last_epoch(self) -> int | None:
        """The epoch of the checkpoint a resume would continue from (None: no usable one)."""
        for name in ("last.pt", "prev.pt"):
            try:
                return int(load_checkpoint(self.ckpt_dir / name)[1]["epoch"])
            except (CmlError, KeyError, TypeError, ValueError):
                continue
        return None

    def load_latest(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The checkpoint to resume from: last.pt, else prev.pt (a corrupt last.pt is renamed
        ``last.corrupt.pt`` so that the next save does not rotate it into prev.pt); None when the
        run was killed before its first checkpoint. Stale temporary files are removed first."""
        if self.is_main:
            for d in (self.path, self.ckpt_dir):
                for p in remove_stale_temporaries(d):
                    warn(f"removed {p}, left by an interrupted write")
        names = ("last.pt", "prev.pt")
        if not any((self.ckpt_dir / n).exists() for n in names):
            warn(f"{self.path}: no checkpoint yet; starting the run from epoch 0")
            return None
        errors = []
        for name in names:
            try:
                state, info = load_checkpoint(self.ckpt_dir / name)
                break
            except CmlError as e:
                errors.append(str(e))
        else:
            raise CmlError(f"{self.path}: no usable checkpoint to resume from ({'; '.join(errors)})")
        if errors:
            warn(f"{errors[0]}; resuming from {self.ckpt_dir / 'prev.pt'}")
            if self.is_main and (self.ckpt_dir / "last.pt").exists():
                os.replace(self.ckpt_dir / "last.pt", self.ckpt_dir / "last.corrupt.pt")
        return state, info

    def check_best(self) -> None:
        """A damaged best.pt is reported when the run resumes, not hours later at the summary: it
        is renamed ``best.corrupt.pt``; the selection state is kept (the metrics of the best epoch
        stay true), and best.pt is written again if a later epoch does better."""
        best = self.ckpt_dir / "best.pt"
        if not best.exists():
            return
        try:
            load_checkpoint(best)
        except CmlError as e:
            warn(f"{e}; renamed it best.corrupt.pt: the weights of the best epoch so far are lost "
                 "(a later better epoch writes best.pt again; until then the summary has no test_at_best)")
            if self.is_main:
                os.replace(best, self.ckpt_dir / "best.corrupt.pt")

    def load_best(self, epoch: int) -> dict[str, Any]:
        """The state of best.pt, which must hold ``epoch``."""
        state, info = load_checkpoint(self.ckpt_dir / "best.pt")
        if info.get("epoch") != epoch:
            raise CmlError(f"{self.ckpt_dir / 'best.pt'}: holds epoch {info.get('epoch')}, not the best epoch {epoch}")
        return state

    # ------------------------------------------------------------------ metrics
    def metrics(self) -> list[dict[str, Any]]:
        path = self.metrics_path
        return [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []

    def keep_metrics_through(self, epoch: int) -> None:
        """Drop the metrics lines of epochs after ``epoch`` (and a torn last line)."""
        if not self.is_main:
            return
        kept = []
        if self.metrics_path.exists():
            for line in self.metrics_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("epoch", 1 << 30) <= epoch:
                    kept.append(json.dumps(row, sort_keys=True))
        atomic_write_bytes(self.metrics_path, ("\n".join(kept) + "\n" if kept else "").encode())

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / "summary.json", summary)
