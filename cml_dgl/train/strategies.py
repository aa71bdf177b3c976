"""How one epoch trains a model: the strategy objects the registry names for each model.

* :class:`MetaStep` (``meta``): CML's three phases per batch of target interactions (paper
  Eq. 8, Alg. 1; cml-spec section 5):

  1. *clone phase* - a clone θ' of the encoder and the meta network φ minimise the weighted
     objective on the batch; θ' and φ each take one step;
  2. *meta phase* - θ' is run again and φ alone takes a step on 0.5 x the objective of the meta
     users' own interactions (``meta_samples`` BPR draws per user and behavior);
  3. *main phase* - the encoder θ takes a step on the batch, weighted by φ without gradient.

  The objective itself lives with the model (:mod:`cml_dgl.models.cml_loss`).
* :class:`PairStep` (``pair``): mean BPR per batch of the model's training edges (MF, LightGCN).
* :class:`NoTraining` (``none``): nothing to train (popularity).

A strategy owns the epoch's draws (:mod:`cml_dgl.train.draws`), the optimisers and schedules, and
their checkpoint state; the trainer owns the loop around it. Logged losses are summed on the
device and read once per epoch (no step waits for the device).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from cml_dgl.data.dataset import Dataset
from cml_dgl.errors import CmlError
from cml_dgl.models.base import Recommender
from cml_dgl.models.cml_loss import CMLBatch
from cml_dgl.train import faults
from cml_dgl.train.distributed import DistContext, data_parallel
from cml_dgl.train.draws import (CMLStep, DeviceTriples, EdgeIndex, MetaPointer, default_meta_users, edge_indices,
                                 make_draws, resolve_sampler)

OPTIMIZER_STATES = ("opt", "sched", "meta", "meta_opt", "meta_sched")


def cyclic(opt: torch.optim.Optimizer, base: float, peak: float, up: int, down: int):
    return torch.optim.lr_scheduler.CyclicLR(opt, base_lr=base, max_lr=peak, step_size_up=up,
                                             step_size_down=down, mode="triangular",
                                             cycle_momentum=False)


class Timer:
    """Seconds per named phase of an epoch (host side; CUDA kernels run asynchronously), read from
    ``clock`` (wall time; benchmarks pass ``time.process_time`` for CPU time)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = {}

    def tick(self, name: str, t0: float) -> float:
        now = self.clock()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - t0
        return now


def _accumulate(sums: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    sums[key] = sums[key] + value if key in sums else value


class Strategy:
    """Base: no draws, no optimiser; subclasses add what their steps need."""

    #: False where the model is not trained (the trainer then evaluates it once, as epoch 0)
    trains = True

    def __init__(self, model: Recommender, ds: Dataset, cfg: dict[str, Any], device: torch.device,
                 dist: DistContext) -> None:
        self.model, self.ds, self.cfg, self.device, self.dist = model, ds, cfg, device, dist
        self.sampler = resolve_sampler(cfg["sampler"], device)
        self.draws = None
        self.n_samples = 0
        self.opt = self.sched = self.meta = self.meta_opt = self.meta_sched = None

    def _require_samples(self) -> None:
        if self.n_samples == 0:
            raise CmlError(f"{self.ds.path or 'dataset'}: model {self.cfg['model']!r} learns from the training "
                           f"{self.ds.behaviors[-1]!r} edges and the dataset has none")

    def _main_optimizer(self) -> None:
        cfg = self.cfg
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg["opt_base_lr"],
                                     weight_decay=cfg["opt_weight_decay"])
        self.sched = cyclic(self.opt, cfg["opt_base_lr"], cfg["opt_max_lr"], cfg["opt_step_up"], cfg["opt_step_down"])

    def _clip_step(self, opt: torch.optim.Optimizer, params) -> None:
        if self.cfg["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(params, self.cfg["grad_clip"])
        opt.step()

    def _means(self, sums: dict[str, torch.Tensor], n_steps: int) -> dict[str, float]:
        """Per-step means of the summed logs, summed over the ranks: one host sync per epoch."""
        if not sums:
            return {}
        keys = list(sums)
        values = self.dist.all_reduce_sum(torch.stack([sums[k] for k in keys])).tolist()
        return {k: v / max(n_steps, 1) for k, v in zip(keys, values)}

    def steps_per_epoch(self) -> int:
        return -(-self.n_samples // self.cfg["batch_size"])

    def run_epoch(self, epoch: int, tick: Callable[[], None], timer: Timer) -> dict[str, float]:
        """Train one epoch; ``tick()`` after each step (progress). Returns the mean logged losses."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        for sched in (self.sched, self.meta_sched):
            if sched is not None:
                sched.step()

    # ------------------------------------------------------------------ checkpoint state
    def state(self, tensors: bool) -> dict[str, Any]:
        """Optimiser and sampler state: the tensors for the checkpoint's state (``tensors``), the
        JSON part (numpy's generator, the meta pointer) for its info."""
        st = self.draws.state() if self.draws is not None else {}
        st = {k: v for k, v in st.items() if isinstance(v, torch.Tensor) == tensors}
        if tensors:
            st.update({name: getattr(self, name).state_dict() for name in OPTIMIZER_STATES
                       if getattr(self, name) is not None})
        return st

    def load(self, state: dict[str, Any], info: dict[str, Any]) -> bool:
        """Restore the optimisers; False where the sampler state does not fit this sampler."""
        for name in OPTIMIZER_STATES:
            if getattr(self, name) is not None:
                getattr(self, name).load_state_dict(state[name])
        return self.draws is None or self.draws.load_state({**info, **state})

    def reseed(self, seed: int) -> None:
        if self.draws is not None:
            self.draws.reseed(seed)


class NoTraining(Strategy):
    """The model is evaluated as built (its parameters, if any, are fixed)."""

    trains = False

    def run_epoch(self, epoch: int, tick: Callable[[], None], timer: Timer) -> dict[str, float]:
        return {}


class PairStep(Strategy):
    """Mean BPR per batch of the model's training edges (each once per epoch, shuffled, one
    uniform negative each). Distributed, rank r takes rows j ≡ r (mod W) of the batch and scales
    its mean by n_r / n, so the ranks' gradients sum to the batch's."""

    def __init__(self, model, ds, cfg, device, dist) -> None:
        super().__init__(model, ds, cfg, device, dist)
        u, i = model.training_edges(ds)
        index = [EdgeIndex(u, i, ds.n_users, ds.n_items)]
        self.n_samples = len(index[0].indices)
        self._require_samples()
        self.draws = make_draws(self.sampler, ds, index, cfg, device, cfg["seed"])
        self._main_optimizer()

    def run_epoch(self, epoch: int, tick: Callable[[], None], timer: Timer) -> dict[str, float]:
        t = timer.clock()
        trip = self.draws.pair_triples()
        t = timer.tick("sampling", t)
        B, n = self.cfg["batch_size"], 0
        sums: dict[str, torch.Tensor] = {}
        half = max(1, -(-len(trip) // B) // 2)
        rank, world = self.dist.rank, self.dist.world
        for start in range(0, len(trip), B):
            sl = slice(start, start + B)
            batch = DeviceTriples(trip.users[sl], trip.pos[sl], trip.neg[sl])
            if world == 1:
                loss, _ = self.model.loss(batch)
            else:
                rows, n_rows = slice(rank, None, world), len(batch)
                n_mine = len(range(n_rows)[rows])
                rows, scale = (rows, n_mine / n_rows) if n_mine else (slice(0, 1), 0.0)
                loss, _ = self.model.loss(DeviceTriples(batch.users[rows], batch.pos[rows], batch.neg[rows]))
                loss = scale * loss
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.dist.all_reduce_grads(self.model.parameters())
            self._clip_step(self.opt, list(self.model.parameters()))
            _accumulate(sums, "bpr", loss.detach().double())
            n += 1
            tick()
            if n == half:
                faults.pause_point("train", epoch)
        timer.tick("phase3_main", t)
        return self._means(sums, n)


class MetaStep(Strategy):
    """CML's three phases per batch (see the module docstring)."""

    def __init__(self, model, ds, cfg, device, dist) -> None:
        super().__init__(model, ds, cfg, device, dist)
        self.meta = model.meta
        model.objective.shard_sum = dist.shard_sum
        index = edge_indices(ds)
        meta_users = ds.meta_users if (cfg["meta_users"] == "auto" and ds.meta_users is not None) \
            else default_meta_users(ds, np.random.default_rng(cfg["seed"] + 1))
        self.meta_pointer = MetaPointer(np.asarray(meta_users, dtype=np.int64), cfg["meta_batch"])
        self.n_samples = len(ds.edges(ds.n_behaviors - 1)[0])
        self._require_samples()
        cfg = model.draw_config(cfg)
        self.draws = make_draws(self.sampler, ds, index, cfg, device, cfg["seed"], self.meta_pointer,
                                with_meta=self.meta is not None)
        self._main_optimizer()
        if self.meta is not None:
            if cfg["meta_optimizer"] == "sgd":
                self.meta_opt = torch.optim.SGD(self.meta.parameters(), lr=cfg["meta_opt_base_lr"],
                                                momentum=0.95, nesterov=True,
                                                weight_decay=cfg["meta_opt_weight_decay"])
            else:
                self.meta_opt = torch.optim.AdamW(self.meta.parameters(), lr=cfg["meta_opt_base_lr"],
                                                  weight_decay=cfg["meta_opt_weight_decay"])
            self.meta_sched = cyclic(self.meta_opt, cfg["meta_opt_base_lr"], cfg["meta_opt_max_lr"],
                                     cfg["meta_step_up"], cfg["meta_step_down"])
        # phase 3 runs the encoder under DDP when distributed (see cml_dgl.train.distributed)
        self.main_forward = data_parallel(model, dist) if dist.enabled else model

    def run_epoch(self, epoch: int, tick: Callable[[], None], timer: Timer) -> dict[str, float]:
        t = timer.clock()
        if self.cfg["meta_pointer_reset"]:
            self.meta_pointer.pos = 0
        steps = self.draws.cml_steps()
        timer.tick("sampling", t)
        sums: dict[str, torch.Tensor] = {}
        half = max(1, len(steps) // 2)
        for n_steps, step in enumerate(steps, start=1):
            self.step(step, sums, timer)
            tick()
            if n_steps == half:
                faults.pause_point("train", epoch)
        return self._means(sums, len(steps))

    def step(self, step: CMLStep, sums: dict[str, torch.Tensor], timer: Timer) -> None:
        """The three phases of one step (paper Alg. 1); adds the step's logged losses to ``sums``
        as device tensors (no host sync).

        The clone θ' starts equal to θ, so one forward pass of θ serves phase 1 (its gradients are
        θ''s, moved to the clone) and phase 3, whose encoder output θ's phase-1 and phase-2 steps do
        not change (θ does not move before phase 3; only φ does). Phase 2 steps φ alone, and φ's
        gradient does not pass through the encoder, so θ' runs there without an autograd graph.
        Both give the values of the plain three passes exactly. Under data parallelism phase 3 runs
        through DDP, so phase 1 keeps its own forward pass there."""
        cfg, model = self.cfg, self.model
        t = timer.clock()
        use_meta = self.meta is not None
        shared = not self.dist.enabled
        out = model(item_behavior=False) if shared else None
        if use_meta:
            self.meta.train()
            clone = model.clone()
            clone_opt = torch.optim.AdamW(clone.parameters(), lr=cfg["lr_clone"],
                                          weight_decay=cfg["opt_weight_decay"])
            batch = CMLBatch(step.triples, step.cl_clone, "grad")
            self.meta_opt.zero_grad(set_to_none=True)
            if shared:
                obj, _ = model.objective(out, batch)
                self.opt.zero_grad(set_to_none=True)
                obj.backward(retain_graph=True)
                for p, q in zip(model.parameters(), clone.parameters()):
                    q.grad, p.grad = p.grad, None
            else:
                obj, _ = clone.loss(batch)
                obj.backward()
            self.dist.all_reduce_grads(list(clone.parameters()) + list(self.meta.parameters()))
            if cfg["grad_clip"] > 0:
                nn.utils.clip_grad_norm_(self.meta.parameters(), cfg["grad_clip"])
            self._clip_step(clone_opt, list(clone.parameters()))
            self.meta_opt.step()
            t = timer.tick("phase1_clone", t)
            with torch.no_grad():
                clone_out = clone(item_behavior=False)
            meta_obj, _ = model.objective(clone_out, CMLBatch(step.meta_triples, step.cl_meta, "grad"))
            self.meta_opt.zero_grad(set_to_none=True)
            if meta_obj.requires_grad:
                (0.5 * meta_obj).backward()
            self.dist.all_reduce_grads(self.meta.parameters())
            self._clip_step(self.meta_opt, list(self.meta.parameters()))
            _accumulate(sums, "meta", meta_obj.detach().double())
            del clone, clone_opt, clone_out
            t = timer.tick("phase2_meta", t)
        if out is None:
            out = self.main_forward(item_behavior=False)
        obj, logs = model.objective(out, CMLBatch(step.triples, step.cl_main, "nograd" if use_meta else "none"))
        self.opt.zero_grad(set_to_none=True)
        obj.backward()
        self._clip_step(self.opt, list(model.parameters()))
        timer.tick("phase3_main", t)
        _accumulate(sums, "total", obj.detach().double())
        for key, v in logs.items():
            _accumulate(sums, key, v)

    def state(self, tensors: bool) -> dict[str, Any]:
        st = super().state(tensors)
        if not tensors:
            st["meta_pos"] = self.meta_pointer.pos
        return st

    def load(self, state: dict[str, Any], info: dict[str, Any]) -> bool:
        ok = super().load(state, info)
        self.meta_pointer.pos = info["meta_pos"]
        return ok


STRATEGIES: dict[str, type[Strategy]] = {"meta": MetaStep, "pair": PairStep, "none": NoTraining}
