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
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cml_dgl.data.dataset import Dataset
from cml_dgl.errors import CmlError
from cml_dgl.eval.evaluate import evaluate_sampled
from cml_dgl.fsutil import atomic_write_bytes, atomic_write_json
from cml_dgl.train import sampler as smp
from cml_dgl.train.checkpoint import load_checkpoint, save_checkpoint
from cml_dgl.train.config import dump
from cml_dgl.train.model_factory import build_model, resolve_device

RESUMABLE_KEYS = ("epochs", "patience", "device")


@dataclass
class TrainState:
    epoch: int = 0
    best_epoch: int = -1
    best_value: float = -1.0
    wait: int = 0
    meta_pos: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _cyclic(opt: torch.optim.Optimizer, base: float, peak: float, up: int, down: int):
    return torch.optim.lr_scheduler.CyclicLR(opt, base_lr=base, max_lr=peak, step_size_up=up,
                                             step_size_down=down, mode="triangular",
                                             cycle_momentum=False)


class Trainer:
    """Trains one model on one dataset into a run directory (config, metrics.jsonl, checkpoints)."""

    def __init__(self, ds: Dataset, cfg: dict[str, Any], run_dir: str | os.PathLike, *,
                 quiet: bool = False) -> None:
        self.ds, self.cfg, self.run_dir, self.quiet = ds, cfg, Path(run_dir), quiet
        if cfg["monitor"] == "valid" and len(ds.valid) == 0:
            raise CmlError(f"{ds.path or 'dataset'}: has no validation split (made with --no-valid); "
                           "train with --monitor test (the paper's protocol) or re-run preprocess")
        self.device = resolve_device(cfg["device"])
        torch.manual_seed(cfg["seed"])
        self.rng = np.random.default_rng(cfg["seed"])
        self.model, self.meta = build_model(ds, cfg, self.device)
        self.index = smp.edge_indices(ds)
        self.is_cml = cfg["model"] == "cml"
        self.trainable = any(p.requires_grad for p in self.model.parameters())
        if self.is_cml:
            meta_users = ds.meta_users if (cfg["meta_users"] == "auto" and ds.meta_users is not None) \
                else smp.default_meta_users(ds, np.random.default_rng(cfg["seed"] + 1))
            self.meta_pointer = smp.MetaPointer(np.asarray(meta_users, dtype=np.int64), cfg["meta_batch"])
        elif self.trainable:
            from cml_dgl.models.baselines import bpr_edges

            u, i = bpr_edges(cfg["model"], ds)
            self.pair_index = smp.EdgeIndex(u, i, ds.n_users, ds.n_items)
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
        self.state = TrainState()
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ objective
    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.long, device=self.device)

    def _objective(self, out, triples: list[smp.Triples], cl_users: np.ndarray,
                   weigh: str) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted objective of one batch. ``weigh``: "grad", "nograd" or "none" (w = 1)."""
        from cml_dgl.models.losses import bpr_loss, contrastive_loss

        cfg, K = self.cfg, self.ds.n_behaviors
        meta = self.meta if weigh != "none" else None
        total = out.user.new_zeros(())
        bpr_sum = out.user.new_zeros(())
        reg = out.user.new_zeros(())
        for k, t in enumerate(triples):
            if len(t) == 0:
                continue
            u, p, n = self._t(t.users), self._t(t.pos), self._t(t.neg)
            zu, zp, zn = out.user[u], out.item[p], out.item[n]
            loss = bpr_loss((zu * zp).sum(-1), (zu * zn).sum(-1))
            if meta is not None:
                w = self._weights(meta.bpr_weights, loss, out.user[u], out.user_beh[k][u], k, weigh)
                loss = w * loss
            bpr_sum = bpr_sum + loss.sum()
            if cfg["reg_all_behaviors"] or k == K - 1:
                reg = reg + zu.pow(2).sum() + zp.pow(2).sum() + zn.pow(2).sum()
        total = bpr_sum / K + cfg["reg"] * (reg / K if cfg["reg_all_behaviors"] else reg)
        logs = {"bpr": float(bpr_sum.detach()) / cfg["batch_size"] / K}
        cl_behaviors = list(range(K if cfg["cl_include_target"] else K - 1))
        if cfg["variant"] != "no-cl" and cfg["beta"] > 0 and len(cl_users) >= 2 and cl_behaviors:
            s = self._t(cl_users)
            anchor = out.user_beh[K - 1][s]
            cl_sum = out.user.new_zeros(())
            for k in cl_behaviors:
                loss = contrastive_loss(anchor, out.user_beh[k][s], temperature=cfg["cl_temperature"],
                                        similarity=cfg["cl_similarity"], variant=cfg["cl_variant"],
                                        chunk_size=cfg["cl_chunk"], users=s)
                if meta is not None:
                    w = self._weights(meta.cl_weights, loss, out.user_beh[k][s], out.user[s], k, weigh)
                    loss = w * loss
                cl_sum = cl_sum + loss.sum()
            total = total + cfg["beta"] * cl_sum / len(cl_behaviors)
            logs["cl"] = float(cl_sum.detach()) / cfg["batch_size"] / len(cl_behaviors)
        logs["reg"] = float(reg.detach()) / cfg["batch_size"]
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

    def _cml_epoch(self, bar) -> dict[str, float]:
        cfg, ds = self.cfg, self.ds
        t = time.perf_counter()
        samples = smp.cml_epoch_samples(ds, self.index, self.rng)
        if cfg["meta_pointer_reset"]:
            self.meta_pointer.pos = 0
        t = self._tick("sampling", t)
        sums: dict[str, float] = {}
        B = cfg["batch_size"]
        n_steps = 0
        use_meta = self.meta is not None
        for start in range(0, len(samples), B):
            t = time.perf_counter()
            triples = samples.batch(start, start + B)
            batch_users = samples.users[start:start + B]
            s1 = smp.contrast_sample(batch_users, cfg["cl_sample_ratio"], self.rng)
            s3 = smp.contrast_sample(batch_users, cfg["cl_sample_ratio"], self.rng)
            if use_meta:
                meta_users = self.meta_pointer.next()
                meta_k = [k if cfg["meta_bpr_per_behavior"] else ds.n_behaviors - 1
                          for k in range(ds.n_behaviors)]
                meta_triples = [smp.meta_triples(meta_users, self.index[k], cfg["meta_samples"], self.rng)
                                for k in meta_k]
                s2 = meta_users if cfg["meta_cl_all_users"] else \
                    smp.contrast_sample(meta_users, cfg["cl_sample_ratio"], self.rng)
            t = self._tick("sampling", t)
            if use_meta:
                self.meta.train()
                clone = self.model.clone()
                clone_opt = torch.optim.AdamW(clone.parameters(), lr=cfg["lr_clone"],
                                              weight_decay=cfg["opt_weight_decay"])
                obj, _ = self._objective(clone(item_behavior=False), triples, s1, "grad")
                self.meta_opt.zero_grad(set_to_none=True)
                obj.backward()
                if cfg["grad_clip"] > 0:
                    nn.utils.clip_grad_norm_(self.meta.parameters(), cfg["grad_clip"])
                self._clip_step(clone_opt, list(clone.parameters()))
                self.meta_opt.step()
                t = self._tick("phase1_clone", t)
                meta_obj, _ = self._objective(clone(item_behavior=False), meta_triples, s2, "grad")
                self.meta_opt.zero_grad(set_to_none=True)
                (0.5 * meta_obj).backward()
                self._clip_step(self.meta_opt, list(self.meta.parameters()))
                sums["meta"] = sums.get("meta", 0.0) + float(meta_obj.detach())
                del clone, clone_opt
                t = self._tick("phase2_meta", t)
            obj, logs = self._objective(self.model(item_behavior=False), triples, s3, "nograd" if use_meta else "none")
            self.opt.zero_grad(set_to_none=True)
            obj.backward()
            self._clip_step(self.opt, list(self.model.parameters()))
            self._tick("phase3_main", t)
            sums["total"] = sums.get("total", 0.0) + float(obj.detach())
            for key, v in logs.items():
                sums[key] = sums.get(key, 0.0) + v
            n_steps += 1
            bar.update(1)
        return {k: v / max(n_steps, 1) for k, v in sums.items()}

    def _pair_epoch(self, bar) -> dict[str, float]:
        t = time.perf_counter()
        trip = smp.pair_epoch_samples(self.pair_index, self.rng)
        t = self._tick("sampling", t)
        B, total, n = self.cfg["batch_size"], 0.0, 0
        for start in range(0, len(trip), B):
            sl = slice(start, start + B)
            loss = self.model.bpr_loss(self._t(trip.users[sl]), self._t(trip.pos[sl]),
                                       self._t(trip.neg[sl]), self.cfg["reg"])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self._clip_step(self.opt, list(self.model.parameters()))
            total += float(loss.detach())
            n += 1
            bar.update(1)
        self._tick("phase3_main", t)
        return {"bpr": total / max(n, 1)}

    def steps_per_epoch(self) -> int:
        if self.is_cml:
            n = len(self.ds.edges(self.ds.n_behaviors - 1)[0])
        elif self.trainable:
            n = len(self.pair_index.indices)
        else:
            return 0
        return -(-n // self.cfg["batch_size"])

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
    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"model": self.model.state_dict(), "torch_rng": torch.get_rng_state()}
        for name in ("meta", "opt", "sched", "meta_opt", "meta_sched"):
            obj = getattr(self, name)
            if obj is not None:
                st[name] = obj.state_dict()
        return st

    def _info(self) -> dict[str, Any]:
        s = self.state
        return {"epoch": s.epoch, "best_epoch": s.best_epoch, "best_value": s.best_value,
                "wait": s.wait, "meta_pos": self.meta_pointer.pos if self.is_cml else 0,
                "numpy_rng": self.rng.bit_generator.state, "config": self.cfg,
                "id_map_checksum": self.ds.id_map_checksum(), "model": self.cfg["model"],
                "n_users": self.ds.n_users, "n_items": self.ds.n_items,
                "behaviors": self.ds.behaviors}

    def _save(self, best: bool) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        state, info = self._state_dict(), self._info()
        last, prev = self.ckpt_dir / "last.pt", self.ckpt_dir / "prev.pt"
        if last.exists():
            os.replace(last, prev)
        save_checkpoint(last, state, info)
        if best:
            save_checkpoint(self.ckpt_dir / "best.pt", state, info)

    def _restore(self) -> None:
        errors = []
        for name in ("last.pt", "prev.pt"):
            try:
                state, info = load_checkpoint(self.ckpt_dir / name)
                break
            except CmlError as e:
                errors.append(str(e))
        else:
            raise CmlError(f"{self.run_dir}: no usable checkpoint to resume from ({'; '.join(errors)})")
        for e in errors:
            print(f"warning: {e}; using the previous checkpoint", file=sys.stderr)
        if info.get("id_map_checksum") != self.ds.id_map_checksum():
            raise CmlError(f"{self.run_dir}: checkpoint was trained on another dataset (id-map checksum differs)")
        self.model.load_state_dict(state["model"])
        for name in ("meta", "opt", "sched", "meta_opt", "meta_sched"):
            if getattr(self, name) is not None:
                getattr(self, name).load_state_dict(state[name])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = info["numpy_rng"]
        s = self.state
        s.epoch, s.best_epoch, s.best_value, s.wait = (info["epoch"], info["best_epoch"],
                                                       info["best_value"], info["wait"])
        if self.is_cml:
            self.meta_pointer.pos = info["meta_pos"]
        # drop metrics lines written after the checkpoint (and a torn last line)
        path = self.run_dir / "metrics.jsonl"
        kept = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("epoch", 1 << 30) <= s.epoch:
                    kept.append(json.dumps(row, sort_keys=True))
        atomic_write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())

    def _append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def prepare_run_dir(self, overwrite: bool = False, resume: bool = False) -> None:
        rd = self.run_dir
        if resume:
            if not (rd / "config.yaml").is_file():
                raise CmlError(f"{rd}: not a run directory (no config.yaml) to resume")
            self._restore()
            return
        if rd.exists() and any(rd.iterdir()) and not overwrite:
            raise CmlError(f"{rd}: run directory exists and is not empty (pass --overwrite or --resume)")
        if rd.exists() and overwrite:
            for sub in ("metrics.jsonl", "summary.json"):
                (rd / sub).unlink(missing_ok=True)
            for f in self.ckpt_dir.glob("*.pt") if self.ckpt_dir.exists() else []:
                f.unlink()
        rd.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(rd / "config.yaml", dump(self.cfg).encode())
        atomic_write_json(rd / "run.json", {
            "dataset": str(Path(self.ds.path).resolve()) if self.ds.path else None,
            "id_map_checksum": self.ds.id_map_checksum(),
            "test_selected": self.cfg["monitor"] == "test",
            "device": str(self.device),
            "torch": torch.__version__,
        })

    # ------------------------------------------------------------------ main loop
    def fit(self) -> dict[str, Any]:
        cfg, s = self.cfg, self.state
        monitor = cfg["monitor"]
        metric = cfg["monitor_metric"]
        steps = self.steps_per_epoch()
        n_epochs = cfg["epochs"] if self.trainable else 0
        if not self.trainable and s.epoch == 0:
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
        t = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch, "losses": {k: round(v, 8) for k, v in losses.items()}}
        if len(self.ds.valid):
            row["valid"] = self.evaluate("valid")
        if cfg["monitor"] == "test":
            row["test"] = self.evaluate("test")
        self._tick("eval", t)
        value = row[cfg["monitor"]][cfg["monitor_metric"]]
        improved = value > s.best_value
        if improved:
            s.best_value, s.best_epoch, s.wait = value, epoch, 0
        else:
            s.wait += 1
        s.epoch = epoch
        row["seconds"] = round(time.perf_counter() - t0, 4)
        row["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        self._append_metrics(row)
        self._save(best=improved)
        if not self.quiet:
            print(json.dumps(row, sort_keys=True), flush=True)

    def summary(self) -> dict[str, Any]:
        """Best epoch by the monitored metric; with monitor=valid the test split is evaluated once,
        at the best checkpoint. Written to ``summary.json``."""
        s, cfg = self.state, self.cfg
        rows = [json.loads(x) for x in (self.run_dir / "metrics.jsonl").read_text().splitlines() if x]
        best_row = next((r for r in rows if r["epoch"] == s.best_epoch), None)
        out: dict[str, Any] = {"monitor": cfg["monitor"], "monitor_metric": cfg["monitor_metric"],
                               "best_epoch": s.best_epoch, "epochs_run": s.epoch,
                               "test_selected": cfg["monitor"] == "test", "tie_rule": cfg["tie_rule"]}
        if best_row is not None:
            out["best"] = {k: best_row[k] for k in ("valid", "test") if k in best_row}
        if cfg["monitor"] == "test":
            for key in rows[0].get("test", {}):
                vals = [r["test"][key] for r in rows if "test" in r]
                out.setdefault("best_per_metric", {})[key] = max(vals)
        elif (self.ckpt_dir / "best.pt").exists():
            state, _ = load_checkpoint(self.ckpt_dir / "best.pt")
            current = self.model.state_dict()
            self.model.load_state_dict(state["model"])
            out["test_at_best"] = self.evaluate("test")
            self.model.load_state_dict(current)
        atomic_write_json(self.run_dir / "summary.json", out)
        return out
