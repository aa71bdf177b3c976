"""The training loop: epochs, early stopping, selection on the monitored split, checkpoints and
logging, for every registered model.

The trainer never asks which model it trains: the registry (:mod:`cml_dgl.models.registry`)
builds the model and names its strategy (:mod:`cml_dgl.train.strategies`: CML's three phases,
the plain pairwise step, or no training), which runs each epoch's steps and owns the optimisers.

Devices: graph, parameters, samples and losses live on the run's device (CUDA needs the torch
backend). A whole epoch is drawn before its steps (:mod:`cml_dgl.train.draws`): with numpy on the
host and copied once (``sampler: host``, the CPU default), or with torch on the device
(``sampler: device``, the GPU default); steps read views of it. No step waits for the device:
logged losses are summed on the device and read once per epoch. On CUDA the per-phase ``timings``
therefore measure the host side only (kernels run asynchronously); an epoch's ``seconds`` is
exact, as evaluation synchronises. Distributed data parallelism (torchrun): see
:mod:`cml_dgl.train.distributed`.

Protocols (:func:`protocol`, in ``run.json`` and ``summary.json``): ``paper`` selects the epoch on
the test split (``monitor: test``), ``honest`` on the validation split and reads the test split
once, at the selected epoch (``monitor: valid``); ``monitor: none`` selects nothing and reads the
test split once after the last epoch: ``honest-refit`` on a dataset written by
:mod:`cml_dgl.train.refit` (training + validation purchases, the epochs chosen by an honest run),
``fixed-epochs`` otherwise. A dataset without a test split (:mod:`cml_dgl.tuning` hands trials one)
is never scored on it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from cml_dgl.data.dataset import Dataset
from cml_dgl.errors import CmlError
from cml_dgl.eval.evaluate import evaluate, evaluate_full, evaluate_sampled, training_mask
from cml_dgl.heap import retain_freed_memory
from cml_dgl.models import registry
from cml_dgl.models.base import Scorer
from cml_dgl.train import faults
from cml_dgl.train.config import differences as config_differences
from cml_dgl.train.config import dump
from cml_dgl.train.devices import resolve_device
from cml_dgl.train.distributed import DistContext
from cml_dgl.train.run_dir import RunDir, warn
from cml_dgl.train.strategies import STRATEGIES, Timer

RESUMABLE_KEYS = ("epochs", "patience", "device")

#: ``on_epoch(epoch, row)``: called after each epoch's metrics line and checkpoints are written
EpochCallback = Callable[[int, dict[str, Any]], None]


def protocol(cfg: dict[str, Any], ds: Dataset) -> str:
    """The evaluation protocol of a run (module docstring): paper, honest, honest-refit, fixed-epochs."""
    if cfg["monitor"] == "test":
        return "paper"
    if cfg["monitor"] == "valid":
        return "honest"
    return "honest-refit" if "refit" in ds.options else "fixed-epochs"


def _protocol_fields(cfg: dict[str, Any], ds: Dataset) -> dict[str, Any]:
    name = protocol(cfg, ds)
    return {"protocol": name, **({"refit_from": ds.options["refit"]["source_run"]} if name == "honest-refit" else {})}


@dataclass
class TrainState:
    epoch: int = 0
    best_epoch: int = -1
    best_value: float = -1.0
    wait: int = 0


class Trainer:
    """Trains one model on one dataset into a run directory (config, metrics.jsonl, checkpoints)."""

    def __init__(self, ds: Dataset, cfg: dict[str, Any], run_dir: str | os.PathLike, *,
                 quiet: bool = False, dist: DistContext | None = None) -> None:
        self.dist = dist or DistContext()
        self.ds, self.cfg, self.run_dir = ds, cfg, Path(run_dir)
        self.rundir = RunDir(self.run_dir, is_main=self.dist.is_main)
        self.quiet = quiet or not self.dist.is_main
        if cfg["monitor"] == "valid" and len(ds.valid) == 0:
            raise CmlError(f"{ds.path or 'dataset'}: has no validation split (made with --no-valid, or "
                           "no user has a second purchase to hold out); "
                           "train with --monitor test (the paper's protocol) or re-run preprocess")
        self.device = self.dist.device if self.dist.enabled else resolve_device(cfg["device"])
        retain_freed_memory()  # steps reuse the pages of their large tensors (cml_dgl.heap)
        torch.manual_seed(cfg["seed"])
        spec = registry.spec(cfg["model"])
        self.model = spec.build(ds, cfg, self.device)
        self.strategy = STRATEGIES[spec.strategy](self.model, ds, cfg, self.device, self.dist)
        self.state = TrainState()
        self.timer = Timer()
        self.on_epoch: EpochCallback | None = None
        self._masks: dict[str, Any] = {}

    def steps_per_epoch(self) -> int:
        return self.strategy.steps_per_epoch()

    @torch.no_grad()
    def scorer(self) -> Scorer:
        """The model's scores as it is now, computed in eval mode (one encoder pass)."""
        self.model.eval()
        scorer = self.model.scorer()
        self.model.train()
        return scorer

    def test_groups(self) -> dict[str, Any]:
        """The seen / new users of the test split (:func:`cml_dgl.eval.evaluate.grouped_metrics`),
        by ``monitor_protocol``, at the current weights."""
        res = evaluate(self.ds, self.scorer(), split="test", protocol=self.cfg["monitor_protocol"],
                       ks=self.cfg["eval_ks"], tie_rule=self.cfg["tie_rule"], seed=self.cfg["seed"])[0]
        return {name: {"n_users": g["n_users"],
                       "metrics": None if g["metrics"] is None else {k: round(v, 6) for k, v in g["metrics"].items()}}
                for name, g in res["groups"].items()}

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics of ``split`` at the current weights, by config ``monitor_protocol``: ``sampled``
        (the stored candidates) or ``full`` (every item, the user's training purchases masked)."""
        pairs = self.ds.valid if split == "valid" else self.ds.test
        if self.cfg["monitor_protocol"] == "full":
            if split not in self._masks:
                self._masks[split] = training_mask(self.ds, "target", split)
            res = evaluate_full(self.scorer(), pairs, self._masks[split], self.cfg["eval_ks"],
                                tie_rule=self.cfg["tie_rule"], seed=self.cfg["seed"])
        else:
            negs = self.ds.valid_negatives if split == "valid" else self.ds.test_negatives
            res = evaluate_sampled(self.scorer(), pairs, negs, self.cfg["eval_ks"],
                                   tie_rule=self.cfg["tie_rule"], seed=self.cfg["seed"])
        return {k: round(float(v), 6) for k, v in res.items()}

    # ------------------------------------------------------------------ run directory
    def _state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"model": self.model.state_dict(), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":  # dropout of the meta network draws from the device's generator
            st["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return {**st, **self.strategy.state(tensors=True)}

    def _info(self) -> dict[str, Any]:
        s = self.state
        return {"epoch": s.epoch, "best_epoch": s.best_epoch, "best_value": s.best_value,
                "wait": s.wait, **self.strategy.state(tensors=False),
                "config": self.cfg,
                "id_map_checksum": self.ds.id_map_checksum(), "model": self.cfg["model"],
                "n_users": self.ds.n_users, "n_items": self.ds.n_items,
                "behaviors": self.ds.behaviors}

    def _restore(self) -> None:
        """Continue from the latest usable checkpoint (see :meth:`RunDir.load_latest`) and drop the
        metrics lines written after it; a run killed before its first checkpoint starts again."""
        latest = self.rundir.load_latest()
        if latest is None:
            self.rundir.keep_metrics_through(-1)
            return
        state, info = latest
        if info.get("id_map_checksum") != self.ds.id_map_checksum():
            raise CmlError(f"{self.run_dir}: checkpoint was trained on another dataset (id-map checksum differs)")
        changed = config_differences(self.cfg, info.get("config", self.cfg), ignore=RESUMABLE_KEYS)
        if changed:
            raise CmlError(f"{self.run_dir / 'config.yaml'}: differs from the configuration its checkpoint "
                           f"was trained with ({'; '.join(changed[:3])}); was it edited? Restore it")
        self.rundir.check_best()
        self.model.load_state_dict(state["model"])
        sampler_fits = self.strategy.load(state, info)
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if not sampler_fits:
            self.strategy.reseed(self.cfg["seed"] + 1_000_003 * (info["epoch"] + 1))
            warn(f"{self.run_dir}: the checkpoint's sampler state does not fit the {self.strategy.sampler} sampler "
                 f"on {self.device.type} (trained with another sampler or device); its sample stream restarts "
                 "from the seed and the epoch")
        s = self.state
        s.epoch, s.best_epoch, s.best_value, s.wait = (info["epoch"], info["best_epoch"],
                                                       info["best_value"], info["wait"])
        self.rundir.keep_metrics_through(s.epoch)

    def prepare_run_dir(self, overwrite: bool = False, resume: bool = False) -> None:
        """Create the run directory, or restore the run from it (``resume``). Distributed, rank 0
        does this first (checks, clean-up, writes); the other ranks then only read the checkpoint."""
        if self.dist.is_main:
            if resume:
                if not (self.run_dir / "config.yaml").is_file():
                    raise CmlError(f"{self.run_dir}: not a run directory (no config.yaml) to resume")
                self._restore()
            else:
                self.rundir.create(dump(self.cfg), {
                    "dataset": str(Path(self.ds.path).resolve()) if self.ds.path else None,
                    "id_map_checksum": self.ds.id_map_checksum(),
                    "dataset_fingerprint": self.ds.fingerprint(),
                    "test_selected": self.cfg["monitor"] == "test",
                    **_protocol_fields(self.cfg, self.ds),
                    "device": str(self.device),
                    "sampler": self.strategy.sampler,
                    "torch": torch.__version__,
                }, overwrite)
        self.dist.barrier()
        if resume and not self.dist.is_main:
            self._restore()

    # ------------------------------------------------------------------ main loop
    def fit(self, on_epoch: EpochCallback | None = None) -> dict[str, Any]:
        """Train to the end (or early stop) and write the summary; ``on_epoch`` sees each epoch's
        row once it is on disk (an exception it raises stops training there: tune's pruning)."""
        self.on_epoch = on_epoch
        cfg, s = self.cfg, self.state
        steps = self.steps_per_epoch()
        n_epochs = cfg["epochs"] if self.strategy.trains else 0
        if n_epochs == 0 and s.best_epoch < 0:  # nothing to train: evaluate the initial model once
            self._finish_epoch(0, {}, time.perf_counter())
        while s.epoch < n_epochs and s.wait < cfg["patience"]:
            epoch = s.epoch + 1
            t0 = time.perf_counter()
            self.timer = Timer()
            self.model.train()
            with tqdm(total=steps, desc=f"epoch {epoch}/{n_epochs}", leave=False, file=sys.stderr,
                      disable=self.quiet) as bar:
                losses = self.strategy.run_epoch(epoch, lambda: bar.update(1), self.timer)
            self.strategy.end_epoch()
            self._finish_epoch(epoch, losses, t0)
        return self.summary()

    def _finish_epoch(self, epoch: int, losses: dict[str, float], t0: float) -> None:
        cfg, s = self.cfg, self.state
        faults.pause_point("eval", epoch)
        if not self.dist.is_main:  # rank 0 evaluates, writes and decides; the others follow
            improved = self.dist.broadcast_flag(False)
            s.best_epoch, s.wait = (epoch, 0) if improved else (s.best_epoch, s.wait + 1)
            s.epoch = epoch
            return
        t = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch, "losses": {k: round(v, 8) for k, v in losses.items()}}
        if len(self.ds.valid):
            row["valid"] = self.evaluate("valid")
        if cfg["monitor"] == "test":
            row["test"] = self.evaluate("test")
        self.timer.tick("eval", t)
        # monitor none: no selection, the latest epoch is kept
        value = float(epoch) if cfg["monitor"] == "none" else row[cfg["monitor"]][cfg["monitor_metric"]]
        improved = self.dist.broadcast_flag(value > s.best_value)
        if improved:
            s.best_value, s.best_epoch, s.wait = value, epoch, 0
        else:
            s.wait += 1
        s.epoch = epoch
        row["seconds"] = round(time.perf_counter() - t0, 4)
        row["timings"] = {k: round(v, 4) for k, v in self.timer.seconds.items()}
        self.rundir.append_metrics(row)
        self.rundir.save(self._state_dict(), self._info(), best=improved)
        if not self.quiet:
            print(json.dumps(row, sort_keys=True), flush=True)
        if self.on_epoch is not None:
            self.on_epoch(epoch, row)

    def summary(self) -> dict[str, Any]:
        """Best epoch by the monitored metric; with monitor valid (none) the test split is evaluated
        once, at the best (last) checkpoint, and with every monitor ``test_groups`` holds its seen and
        new users there. Written to ``summary.json`` (by rank 0; the other ranks return {})."""
        if not self.dist.is_main:
            return {}
        s, cfg = self.state, self.cfg
        rows = self.rundir.metrics()
        best_row = next((r for r in rows if r["epoch"] == s.best_epoch), None)
        out: dict[str, Any] = {"monitor": cfg["monitor"], "monitor_metric": cfg["monitor_metric"],
                               "best_epoch": s.best_epoch, "epochs_run": s.epoch,
                               "test_selected": cfg["monitor"] == "test", "tie_rule": cfg["tie_rule"],
                               **_protocol_fields(cfg, self.ds)}
        if best_row is not None:
            out["best"] = {k: best_row[k] for k in ("valid", "test") if k in best_row}
        if cfg["monitor"] == "test" and rows:
            for key in rows[0].get("test", {}):
                vals = [r["test"][key] for r in rows if "test" in r]
                out.setdefault("best_per_metric", {})[key] = max(vals)
        if s.best_epoch >= 0 and len(self.ds.test):
            selected_on_test = cfg["monitor"] == "test"
            try:
                state = self.rundir.load_best(s.best_epoch)
            except CmlError as e:
                if not selected_on_test:
                    out["test_at_best"] = None
                    out["warning"] = f"no test score at the best epoch: {e}"
                warn(f"{e}; summary.json has no {'test_groups' if selected_on_test else 'test_at_best'}")
            else:
                current = {k: v.clone() for k, v in self.model.state_dict().items()}  # state_dict aliases
                self.model.load_state_dict(state["model"])
                if not selected_on_test:
                    out["test_at_best"] = self.evaluate("test")
                out["test_groups"] = self.test_groups()
                self.model.load_state_dict(current)
        self.rundir.write_summary(out)
        return out
