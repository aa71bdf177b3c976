"""The training loop: the three phases of CML (paper Eq. 8, cml-spec section 5) and the baselines.

Per training batch of target interactions (one epoch = one pass over them, cml-spec 3.1):

1. *clone phase* - a clone θ' of the encoder and the meta network φ minimise the weighted
   objective on the batch; θ' and φ each take one step;
2. *meta phase* - θ' is run again and φ alone takes a step on 0.5 x the objective of the meta
   users' own interactions (``meta_samples`` BPR draws per user and behavior);
3. *main phase* - the encoder θ takes a step on the batch, weighted by φ without gradient.

The objective of a batch with BPR triples O_k and contrast sample S is

    Obj = [ 1/K Σ_k Σ_{j∈O_k} w_bpr·ℓ_bpr  +  λ·Reg  +  β/|C| Σ_{k∈C} Σ_{u∈S} w_cl·ℓ_cl(k) ] / B

with the weights w from φ (Eq. 5-6), C the contrasted behaviors and B the batch size.
Baselines (MF, LightGCN) train with mean BPR on their positive edges in the same loop.

Devices: graph, parameters, samples and losses live on the run's device (CUDA needs the torch
backend). A whole epoch is drawn before its steps (:mod:`cml_dgl.train.batches`): with numpy on the
host and copied once (``sampler: host``, the CPU default), or with torch on the device
(``sampler: device``, the GPU default); steps read views of it. No step waits for the device:
logged losses are summed on the device and read once per epoch. On CUDA the per-phase ``timings`` therefore measure the host side only
(kernels run asynchronously); an epoch's ``seconds`` is exact, as evaluation synchronises.
Distributed data parallelism (torchrun): see :mod:`cml_dgl.train.distributed`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cml_dgl.data.dataset import Dataset
from cml_dgl.errors import CmlError
from cml_dgl.eval.evaluate import evaluate_sampled
from cml_dgl.train import faults
from cml_dgl.train import sampler as smp
from cml_dgl.train.batches import CMLStep, DeviceTriples, Draws, make_draws, resolve_sampler
from cml_dgl.train.config import differences as config_differences
from cml_dgl.train.config import dump
from cml_dgl.train.distributed import DistContext, data_parallel
from cml_dgl.train.model_factory import build_model, resolve_device
from cml_dgl.train.run_dir import RunDir, warn

RESUMABLE_KEYS = ("epochs", "patience", "device")


@dataclass
class TrainState:
    epoch: int = 0
    best_epoch: int = -1
    best_value: float = -1.0
    wait: int = 0


def _cyclic(opt: torch.optim.Optimizer, base: float, peak: float, up: int, down: int):
    return torch.optim.lr_scheduler.CyclicLR(opt, base_lr=base, max_lr=peak, step_size_up=up,
                                             step_size_down=down, mode="triangular",
                                             cycle_momentum=False)


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` whose backward is deterministic on the CPU (index_add); the backward of
    ``x[index]`` (index_put with accumulate) adds in a thread-dependent order on large inputs."""
    return x.index_select(0, index)


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
        torch.manual_seed(cfg["seed"])
        self.model, self.meta = build_model(ds, cfg, self.device)
        self.is_cml = cfg["model"] == "cml"
        self.trainable = any(p.requires_grad for p in self.model.parameters())
        self.sampler = resolve_sampler(cfg["sampler"], self.device)
        self.meta_pointer: smp.MetaPointer | None = None
        self.draws: Draws | None = None
        self.n_train_samples = 0
        if self.is_cml:
            index = smp.edge_indices(ds)
            meta_users = ds.meta_users if (cfg["meta_users"] == "auto" and ds.meta_users is not None) \
                else smp.default_meta_users(ds, np.random.default_rng(cfg["seed"] + 1))
            self.meta_pointer = smp.MetaPointer(np.asarray(meta_users, dtype=np.int64), cfg["meta_batch"])
            self.n_train_samples = len(ds.edges(ds.n_behaviors - 1)[0])
        elif self.trainable:
            from cml_dgl.models.baselines import bpr_edges

            u, i = bpr_edges(cfg["model"], ds)
            index = [smp.EdgeIndex(u, i, ds.n_users, ds.n_items)]
            self.n_train_samples = len(index[0].indices)
        if (self.is_cml or self.trainable) and self.n_train_samples == 0:
            raise CmlError(f"{ds.path or 'dataset'}: model {cfg['model']!r} learns from the training "
                           f"{ds.behaviors[-1]!r} edges and the dataset has none")
        if self.is_cml or self.trainable:
            self.draws = make_draws(self.sampler, ds, index, cfg, self.device, cfg["seed"],
                                    self.meta_pointer, with_meta=self.meta is not None)
        self.opt = self.sched = self.meta_opt = self.meta_sched = None
        if self.trainable:
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg["opt_base_lr"],
                                         weight_decay=cfg["opt_weight_decay"])
            self.sched = _cyclic(self.opt, cfg["opt_base_lr"], cfg["opt_max_lr"],
                                 cfg["opt_step_up"], cfg["opt_step_down"])
        if self.meta is not None:
            if cfg["meta_optimizer"] == "sgd":
                self.meta_opt = torch.optim.SGD(self.meta.parameters(), lr=cfg["meta_opt_base_lr"],
                                                momentum=0.95, nesterov=True,
                                                weight_decay=cfg["meta_opt_weight_decay"])
            else:
                self.meta_opt = torch.optim.AdamW(self.meta.parameters(), lr=cfg["meta_opt_base_lr"],
                                                  weight_decay=cfg["meta_opt_weight_decay"])
            self.meta_sched = _cyclic(self.meta_opt, cfg["meta_opt_base_lr"], cfg["meta_opt_max_lr"],
                                      cfg["meta_step_up"], cfg["meta_step_down"])
        # phase 3 runs the encoder under DDP when distributed (see cml_dgl.train.distributed)
        self.main_forward = data_parallel(self.model, self.dist) if self.dist.enabled and self.is_cml \
            else self.model
        self.state = TrainState()
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ objective
    def _objective(self, out, triples: list[DeviceTriples], cl_users: torch.Tensor,
                   weigh: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted objective of one batch. ``weigh``: "grad", "nograd" or "none" (w = 1).

        Indices are tensors on the model's device; the logged parts come back as detached float64
        device tensors (no host sync). Distributed, every per-sample vector is computed in full
        (the meta weights need all rows) and only this rank's rows are summed.
        """
        from cml_dgl.models.losses import bpr_loss, contrastive_loss

        cfg, K, shard_sum = self.cfg, self.ds.n_behaviors, self.dist.shard_sum
        meta = self.meta if weigh != "none" else None
        bpr_sum = out.user.new_zeros(())
        reg = out.user.new_zeros(())
        for k, t in enumerate(triples):
            if len(t) == 0:
                continue
            u, p, n = t.users, t.pos, t.neg
            zu, zp, zn = _rows(out.user, u), _rows(out.item, p), _rows(out.item, n)
            loss = bpr_loss((zu * zp).sum(-1), (zu * zn).sum(-1))
            if meta is not None:
                w = self._weights(meta.bpr_weights, loss, zu, _rows(out.user_beh[k], u), k, weigh)
                loss = w * loss
            bpr_sum = bpr_sum + shard_sum(loss)
            if cfg["reg_all_behaviors"] or k == K - 1:
                reg = reg + shard_sum(zu.pow(2)) + shard_sum(zp.pow(2)) + shard_sum(zn.pow(2))
        total = bpr_sum / K + cfg["reg"] * (reg / K if cfg["reg_all_behaviors"] else reg)
        logs = {"bpr": bpr_sum.detach().double() / cfg["batch_size"] / K}
        cl_behaviors = list(range(K if cfg["cl_include_target"] else K - 1))
        if cfg["variant"] != "no-cl" and cfg["beta"] > 0 and len(cl_users) >= 2 and cl_behaviors:
            s = cl_users
            anchor = _rows(out.user_beh[K - 1], s)
            fused = _rows(out.user, s) if meta is not None else None
            cl_sum = out.user.new_zeros(())
            for k in cl_behaviors:
                view = _rows(out.user_beh[k], s)
                loss = contrastive_loss(anchor, view, temperature=cfg["cl_temperature"],
                                        similarity=cfg["cl_similarity"], variant=cfg["cl_variant"],
                                        chunk_size=cfg["cl_chunk"], users=s)
                if meta is not None:
                    w = self._weights(meta.cl_weights, loss, view, fused, k, weigh)
                    loss = w * loss
                cl_sum = cl_sum + shard_sum(loss)
            total = total + cfg["beta"] * cl_sum / len(cl_behaviors)
            logs["cl"] = cl_sum.detach().double() / cfg["batch_size"] / len(cl_behaviors)
        logs["reg"] = reg.detach().double() / cfg["batch_size"]
        return total / cfg["batch_size"], logs

    def _weights(self, fn, loss, z_a, z_b, k: int, weigh: str) -> torch.Tensor:
        if weigh == "grad":
            return fn(loss, z_a, z_b, k)
        was_training = self.meta.training
        if self.cfg["meta_eval_weights"]:
            self.meta.eval()
        with torch.no_grad():
            w = fn(loss.detach(), z_a.detach(), z_b.detach(), k)
        self.meta.train(was_training)
        return w

    def _clip_step(self, opt: torch.optim.Optimizer, params) -> None:
        if self.cfg["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(params, self.cfg["grad_clip"])
        opt.step()

    # ------------------------------------------------------------------ epochs
    def _tick(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - t0
        return now

    def _epoch_means(self, sums: dict[str, torch.Tensor], n_steps: int) -> dict[str, float]:
        """Per-step means of the summed logs, summed over the ranks: one host sync per epoch."""
        if not sums:
            return {}
        keys = list(sums)
        values = self.dist.all_reduce_sum(torch.stack([sums[k] for k in keys])).tolist()
        return {k: v / max(n_steps, 1) for k, v in zip(keys, values)}

    @staticmethod
    def _accumulate(sums: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
        sums[key] = sums[key] + value if key in sums else value

    def _cml_epoch(self, bar) -> dict[str, float]:
        cfg = self.cfg
        t = time.perf_counter()
        if cfg["meta_pointer_reset"]:
            self.meta_pointer.pos = 0
        steps = self.draws.cml_steps()
        t = self._tick("sampling", t)
        sums: dict[str, torch.Tensor] = {}
        half = max(1, len(steps) // 2)
        for n_steps, step in enumerate(steps, start=1):
            self._cml_step(step, sums)
            bar.update(1)
            if n_steps == half:
                faults.pause_point("train", self.state.epoch + 1)
        return self._epoch_means(sums, len(steps))

    def _cml_step(self, step: CMLStep, sums: dict[str, torch.Tensor]) -> None:
        """The three phases of one step (paper Alg. 1); adds the step's logged losses to ``sums``
        as device tensors (no host sync)."""
        cfg = self.cfg
        t = time.perf_counter()
        use_meta = self.meta is not None
        if use_meta:
            self.meta.train()
            clone = self.model.clone()
            clone_opt = torch.optim.AdamW(clone.parameters(), lr=cfg["lr_clone"],
                                          weight_decay=cfg["opt_weight_decay"])
            obj, _ = self._objective(clone(item_behavior=False), step.triples, step.cl_clone, "grad")
            self.meta_opt.zero_grad(set_to_none=True)
            obj.backward()
            self.dist.all_reduce_grads(list(clone.parameters()) + list(self.meta.parameters()))
            if cfg["grad_clip"] > 0:
                nn.utils.clip_grad_norm_(self.meta.parameters(), cfg["grad_clip"])
            self._clip_step(clone_opt, list(clone.parameters()))
            self.meta_opt.step()
            t = self._tick("phase1_clone", t)
            meta_obj, _ = self._objective(clone(item_behavior=False), step.meta_triples, step.cl_meta, "grad")
            self.meta_opt.zero_grad(set_to_none=True)
            (0.5 * meta_obj).backward()
            self.dist.all_reduce_grads(self.meta.parameters())
            self._clip_step(self.meta_opt, list(self.meta.parameters()))
            self._accumulate(sums, "meta", meta_obj.detach().double())
            del clone, clone_opt
            t = self._tick("phase2_meta", t)
        obj, logs = self._objective(self.main_forward(item_behavior=False), step.triples, step.cl_main,
                                    "nograd" if use_meta else "none")
        self.opt.zero_grad(set_to_none=True)
        obj.backward()
        self._clip_step(self.opt, list(self.model.parameters()))
        self._tick("phase3_main", t)
        self._accumulate(sums, "total", obj.detach().double())
        for key, v in logs.items():
            self._accumulate(sums, key, v)

    def _pair_epoch(self, bar) -> dict[str, float]:
        """MF / LightGCN: mean BPR per batch. Distributed, rank r takes rows j ≡ r (mod W) of the
        batch and scales its mean by n_r / n, so the ranks' gradients sum to the batch's."""
        t = time.perf_counter()
        trip = self.draws.pair_triples()
        t = self._tick("sampling", t)
        B, n = self.cfg["batch_size"], 0
        sums: dict[str, torch.Tensor] = {}
        half = max(1, -(-len(trip) // B) // 2)
        rank, world = self.dist.rank, self.dist.world
        for start in range(0, len(trip), B):
            sl = slice(start, start + B)
            users, pos, neg = trip.users[sl], trip.pos[sl], trip.neg[sl]
            if world == 1:
                loss = self.model.bpr_loss(users, pos, neg, self.cfg["reg"])
            else:
                rows, n_rows = slice(rank, None, world), len(users)
                n_mine = len(range(n_rows)[rows])
                rows, scale = (rows, n_mine / n_rows) if n_mine else (slice(0, 1), 0.0)
                loss = scale * self.model.bpr_loss(users[rows], pos[rows], neg[rows], self.cfg["reg"])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.dist.all_reduce_grads(self.model.parameters())
            self._clip_step(self.opt, list(self.model.parameters()))
            self._accumulate(sums, "bpr", loss.detach().double())
            n += 1
            bar.update(1)
            if n == half:
                faults.pause_point("train", self.state.epoch + 1)
        self._tick("phase3_main", t)
        return self._epoch_means(sums, n)

    def steps_per_epoch(self) -> int:
        return -(-self.n_train_samples // self.cfg["batch_size"])

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        user, item = self.model.embeddings()
        self.model.train()
        return user, item

    def evaluate(self, split: str) -> dict[str, float]:
        pairs = self.ds.valid if split == "valid" else self.ds.test
        negs = self.ds.valid_negatives if split == "valid" else self.ds.test_negatives
        user, item = self.embeddings()
        res = evaluate_sampled(user, item, pairs, negs, self.cfg["eval_ks"],
                               tie_rule=self.cfg["tie_rule"], seed=self.cfg["seed"])
        return {k: round(float(v), 6) for k, v in res.items()}

    # ------------------------------------------------------------------ run directory
    def _state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"model": self.model.state_dict(), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":  # dropout of the meta network draws from the device's generator
            st["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        for name in ("meta", "opt", "sched", "meta_opt", "meta_sched"):
            obj = getattr(self, name)
            if obj is not None:
                st[name] = obj.state_dict()
        return {**st, **self._sampler_state(tensors=True)}

    def _sampler_state(self, tensors: bool) -> dict[str, Any]:
        """The sampler's generator state: tensors go into the checkpoint's state, the rest (numpy's
        JSON state) into its info."""
        st = self.draws.state() if self.draws is not None else {}
        return {k: v for k, v in st.items() if isinstance(v, torch.Tensor) == tensors}

    def _info(self) -> dict[str, Any]:
        s = self.state
        return {"epoch": s.epoch, "best_epoch": s.best_epoch, "best_value": s.best_value,
                "wait": s.wait, "meta_pos": self.meta_pointer.pos if self.is_cml else 0,
                **self._sampler_state(tensors=False),
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
        for name in ("meta", "opt", "sched", "meta_opt", "meta_sched"):
            if getattr(self, name) is not None:
                getattr(self, name).load_state_dict(state[name])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if self.draws is not None and not self.draws.load_state({**info, **state}):
            self.draws.reseed(self.cfg["seed"] + 1_000_003 * (info["epoch"] + 1))
            warn(f"{self.run_dir}: the checkpoint's sampler state does not fit the {self.sampler} sampler on "
                 f"{self.device.type} (trained with another sampler or device); its sample stream restarts "
                 "from the seed and the epoch")
        s = self.state
        s.epoch, s.best_epoch, s.best_value, s.wait = (info["epoch"], info["best_epoch"],
                                                       info["best_value"], info["wait"])
        if self.is_cml:
            self.meta_pointer.pos = info["meta_pos"]
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
                    "device": str(self.device),
                    "sampler": self.sampler,
                    "torch": torch.__version__,
                }, overwrite)
        self.dist.barrier()
        if resume and not self.dist.is_main:
            self._restore()

    # ------------------------------------------------------------------ main loop
    def fit(self) -> dict[str, Any]:
        cfg, s = self.cfg, self.state
        steps = self.steps_per_epoch()
        n_epochs = cfg["epochs"] if self.trainable else 0
        if n_epochs == 0 and s.best_epoch < 0:  # nothing to train: evaluate the initial model once
            self._finish_epoch(0, {}, time.perf_counter())
        while s.epoch < n_epochs and s.wait < cfg["patience"]:
            epoch = s.epoch + 1
            t0 = time.perf_counter()
            self.timings = {}
            self.model.train()
            with tqdm(total=steps, desc=f"epoch {epoch}/{n_epochs}", leave=False, file=sys.stderr,
                      disable=self.quiet) as bar:
                losses = self._cml_epoch(bar) if self.is_cml else self._pair_epoch(bar)
            self.sched.step()
            if self.meta_sched is not None:
                self.meta_sched.step()
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
        self._tick("eval", t)
        value = row[cfg["monitor"]][cfg["monitor_metric"]]
        improved = self.dist.broadcast_flag(value > s.best_value)
        if improved:
            s.best_value, s.best_epoch, s.wait = value, epoch, 0
        else:
            s.wait += 1
        s.epoch = epoch
        row["seconds"] = round(time.perf_counter() - t0, 4)
        row["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        self.rundir.append_metrics(row)
        self.rundir.save(self._state_dict(), self._info(), best=improved)
        if not self.quiet:
            print(json.dumps(row, sort_keys=True), flush=True)

    def summary(self) -> dict[str, Any]:
        """Best epoch by the monitored metric; with monitor=valid the test split is evaluated once,
        at the best checkpoint. Written to ``summary.json`` (by rank 0; the other ranks return {})."""
        if not self.dist.is_main:
            return {}
        s, cfg = self.state, self.cfg
        rows = self.rundir.metrics()
        best_row = next((r for r in rows if r["epoch"] == s.best_epoch), None)
        out: dict[str, Any] = {"monitor": cfg["monitor"], "monitor_metric": cfg["monitor_metric"],
                               "best_epoch": s.best_epoch, "epochs_run": s.epoch,
                               "test_selected": cfg["monitor"] == "test", "tie_rule": cfg["tie_rule"]}
        if best_row is not None:
            out["best"] = {k: best_row[k] for k in ("valid", "test") if k in best_row}
        if cfg["monitor"] == "test" and rows:
            for key in rows[0].get("test", {}):
                vals = [r["test"][key] for r in rows if "test" in r]
                out.setdefault("best_per_metric", {})[key] = max(vals)
        elif s.best_epoch >= 0:
            try:
                state = self.rundir.load_best(s.best_epoch)
            except CmlError as e:
                out["test_at_best"] = None
                out["warning"] = f"no test score at the best epoch: {e}"
                warn(f"{e}; summary.json has no test_at_best")
            else:
                current = {k: v.clone() for k, v in self.model.state_dict().items()}  # state_dict aliases
                self.model.load_state_dict(state["model"])
                out["test_at_best"] = self.evaluate("test")
                self.model.load_state_dict(current)
        self.rundir.write_summary(out)
        return out
