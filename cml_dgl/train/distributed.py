"""Data-parallel training with ``torch.distributed`` (``torchrun --nproc_per_node N cml train ...``).

Every rank holds the full graph and model, seeds every generator with the same ``--seed`` and so
draws the same global samples (with ``sampler: device`` on GPUs this assumes identical GPU models:
torch's CUDA generators may lay out their random streams by the device's size; ranks on different
models would draw different, equally valid samples, and the run would no longer equal one process). For each per-sample loss vector of a step (BPR triples of each
behavior, contrastive anchors, the meta users' triples) rank r keeps the rows j with
j ≡ r (mod W). The objective is a sum of per-sample terms divided by the constant batch size B,

.. math::  Obj = \\frac1B \\sum_j t_j = \\sum_{r<W} \\underbrace{\\frac1B \\sum_{j \\equiv r} t_j}_{Obj_r},
           \\qquad \\nabla Obj = \\sum_r \\nabla Obj_r ,

so summing the ranks' gradients (all-reduce SUM, not the mean) gives every rank the gradient of one
process on the same global batch; clipping and the optimiser step then run identically on every
rank and the parameters stay equal.

The meta weight network normalises its input rows with BatchNorm and applies dropout, so a weight
depends on every row of its call. It therefore runs on the full (replicated) rows on every rank,
with the same RNG state, and only the weighted loss *sums* are sharded: the meta network's batch
statistics, dropout masks and running statistics are exactly those of a single process.
Consequence: the full-graph encoder forward and backward, which dominate a CML step (cml-spec 11),
are replicated, not split; what is divided is the per-sample part of the loss and its gradient.

Gradient exchange:

* phase 3 (the main encoder): :class:`~torch.nn.parallel.DistributedDataParallel` with a
  communication hook that sums instead of averaging;
* phase 1 (the clone θ', rebuilt every step) and the meta network φ (called 2K+ times per backward,
  with and without gradients, from several phases): a manual all-reduce SUM of each gradient after
  ``backward``. DDP does not fit there: wrapping a fresh clone every step would broadcast its
  parameters and rebuild the reducer each step, and DDP's reducer expects each parameter to become
  ready once per backward of one forward call of the wrapper.

Only rank 0 writes the run directory, metrics, checkpoints and progress; evaluation runs on rank 0
and its early-stopping decision is broadcast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from cml_dgl.errors import CmlError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; the default is a single process (no communication)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard_sum(self, x: Tensor) -> Tensor:
        """Σ of this rank's rows (j ≡ rank mod world) of ``x``; ``x.sum()`` with one process."""
        if self.world == 1:
            return x.sum()
        return x[self.rank::self.world].sum()

    def all_reduce_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over the ranks, in place (parameters without one are skipped;
        every rank has the same ones, since all ranks build the same graph)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        works = [dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, async_op=True)
                 for p in params if p.grad is not None]
        for w in works:
            w.wait()

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        """``x`` summed over the ranks (in place)."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if self.device is not None and self.device.type == "cuda":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise CmlError(f"environment variable {name}={raw!r}: expected an integer (set by torchrun)") from None


def init_from_env(device: str) -> DistContext:
    """The job of this process from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    With ``WORLD_SIZE`` unset or 1 nothing is initialised. Otherwise the process group is joined
    (NCCL on CUDA, Gloo on the CPU; rendezvous from ``MASTER_ADDR``/``MASTER_PORT``) and the device
    is ``cuda:LOCAL_RANK`` or the CPU. ``device`` is the config's ``auto``/``cpu``/``cuda``.
    """
    from cml_dgl.train.devices import resolve_device

    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise CmlError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    dev = resolve_device(device)
    import torch.distributed as dist

    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise CmlError(f"LOCAL_RANK={local_rank} but torch sees {n} CUDA device(s); start at most {n} "
                           "processes per node (torchrun --nproc_per_node)")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise CmlError(f"process group has rank {dist.get_rank()} of {dist.get_world_size()}, "
                       f"the environment says {rank} of {world}")
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=dev)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _sum_hook(process_group, bucket):
    """DDP communication hook: the bucket's gradients summed over the ranks (DDP's default averages)."""
    import torch.distributed as dist

    fut = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def data_parallel(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` under DistributedDataParallel with summed gradients (see the module docstring)."""
    import inspect

    # no buffer broadcast before each forward (the encoder's buffers are equal on every rank);
    # newer torch renames the option (broadcast_buffers is deprecated there)
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.local_rank] if ctx.device is not None and ctx.device.type == "cuda" else None,
        **no_sync)
    ddp.register_comm_hook(None, _sum_hook)
    return ddp
