"""The process group (launched by torchrun / accelerate launch) and the few collectives tiltlm needs.

One process per device. `world()` says who we are; every function here is exact for any world size and a no-op
returning its input when the world size is 1 (a plain `tilt train`), so callers never branch on "distributed?".

* data: every rank sees the same seeded global pairs of a step and takes a disjoint share (`shard`:
  pairs[rank::size]); each rank's loss is `sum of its pairs' losses / global pairs of the step`, so the exact
  gradient of the whole step is the SUM over ranks (`all_reduce_grads`).
* metrics: windows of sums are gathered and merged (`reduce`), so pair- and token-weighted means stay exact.
* the gradient norm is summed in float64 over every (local) gradient shard and over the ranks that hold disjoint
  shards, so clipping is identical whether the model is whole, replicated or sharded.
"""

from __future__ import annotations

import atexit
import datetime
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch

from ..errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_WORLD = World()


def world() -> World:
    return _WORLD


def resolve_device(requested: str) -> torch.device:
    """`auto` -> cuda if available else cpu; an explicit cuda device without CUDA is a user mistake."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested but CUDA is not available")
    return torch.device(requested)


def init(device: str = "auto", timeout_s: int = 1800) -> World:
    """Join the process group torchrun set up (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA. Idempotent.
    A collective that waits `timeout_s` for a rank that died or hangs fails instead of waiting forever."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _WORLD = World()
        return _WORLD
    import torch.distributed as tdist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    if not tdist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        tdist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
        atexit.register(lambda: tdist.is_initialized() and tdist.destroy_process_group())
    _WORLD = World(rank=rank, size=size, local_rank=local_rank)
    return _WORLD


def device(requested: str) -> torch.device:
    """The device of this process: `cuda:LOCAL_RANK` under torchrun on GPUs, else what `requested` resolves to."""
    dev = resolve_device(requested)
    if _WORLD.enabled and dev.type == "cuda":
        return torch.device("cuda", _WORLD.local_rank)
    return dev


def is_collective_failure(e: BaseException) -> bool:
    """Whether `e` is a collective that failed because another rank died, hung or became unreachable."""
    if not _WORLD.enabled or not isinstance(e, RuntimeError):
        return False
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(e)
    return isinstance(e, dist_error) or any(k in text for k in ("gloo", "NCCL", "Connection reset", "timed out"))


def rank_zero(log: Callable) -> Callable:
    """`log` on rank 0, silence elsewhere (so N ranks do not print N copies of every line)."""
    return log if _WORLD.is_main else (lambda *a, **k: None)


def barrier() -> None:
    if _WORLD.enabled:
        torch.distributed.barrier()


def _comm_device(t_device: torch.device = torch.device("cpu")) -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else t_device


# ----------------------------------------------------------------------------------------------- data and grads
def shard(items: Sequence[T]) -> list[T]:
    """This rank's disjoint share of the step's global items: every item on exactly one rank."""
    return list(items) if not _WORLD.enabled else list(items[_WORLD.rank::_WORLD.size])


@torch.no_grad()
def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """SUM the gradients over ranks (each rank's loss is already divided by the GLOBAL pair count).

    A parameter that got a gradient on any rank gets one on every rank (zeros where it had none), so the optimizer
    treats it identically everywhere; a parameter no rank touched stays `grad is None`, as in one process.
    """
    if not _WORLD.enabled or not params:
        return
    import torch.distributed as tdist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=_comm_device(params[0].device))
    tdist.all_reduce(has, op=tdist.ReduceOp.MAX)
    live = [p for p, h in zip(params, has.tolist()) if h]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict = {}
    for p in live:
        by_dtype.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in by_dtype.values():
        for bucket in _buckets(grads, 1 << 25):  # ~32M elements per all-reduce
            flat = _flatten_dense_tensors(bucket).float()  # bf16/fp16 gradients are summed in fp32
            tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
            for g, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                g.copy_(synced)


def _buckets(tensors: list[torch.Tensor], max_numel: int):
    bucket, n = [], 0
    for t in tensors:
        if bucket and n + t.numel() > max_numel:
            yield bucket
            bucket, n = [], 0
        bucket.append(t)
        n += t.numel()
    if bucket:
        yield bucket


@torch.no_grad()
def clip_grad_norm(params: Sequence[torch.nn.Parameter], max_norm: float, *, sharded: bool = False) -> float:
    """The global L2 norm of the gradients, then scale them so it is at most `max_norm` (as
    torch.nn.utils.clip_grad_norm_). Returns the norm before clipping.

    Summed in float64 over every parameter, and over the ranks' disjoint shards when `sharded` (FSDP), so the norm
    -- and therefore the clipping -- is the same to ~1e-12 whether the model is whole, replicated or sharded
    (torch's fp32 norm of DTensor shards differs from the unsharded one in the 6th digit)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    total = sum(float(torch.linalg.vector_norm(g, 2, dtype=torch.float64)) ** 2 for g in local)
    if sharded:
        total = sum_scalars(total)[0]
    norm = total ** 0.5
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0 and math.isfinite(norm):
        for g in local:
            g.mul_(coef)
    return norm


# ----------------------------------------------------------------------------------------------- small collectives
def all_true(flag: bool) -> bool:
    """True on every rank iff it is True on every rank (so all ranks skip or take the same step)."""
    if not _WORLD.enabled:
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int32, device=_comm_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item()) == 0


def max_int(value: int) -> int:
    """The largest `value` over ranks."""
    if not _WORLD.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def sum_scalars(*values: float) -> list[float]:
    """Elementwise SUM of a few Python floats over ranks (float64)."""
    if not _WORLD.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()


def gather_objects(obj) -> list:
    """all_gather_object: every rank gets [obj of rank 0, obj of rank 1, ...]."""
    if not _WORLD.enabled:
        return [obj]
    out = [None] * _WORLD.size
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj`, on every rank."""
    if not _WORLD.enabled:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def reduce(window: T) -> T:
    """The merge of every rank's `window`, on every rank, in rank order.

    `window` is any object with a no-argument constructor and `merge(other)` (e.g. a MetricWindow of sums):
    sums add up and per-pair lists concatenate, so means computed from the result are exact global means."""
    if not _WORLD.enabled:
        return window
    out = type(window)()
    for part in gather_objects(window):
        out.merge(part)
    return out


__all__ = ["World", "world", "resolve_device", "init", "is_collective_failure", "device", "rank_zero", "barrier", "shard",
           "all_reduce_grads", "clip_grad_norm", "all_true", "max_int", "sum_scalars", "gather_objects",
           "broadcast_object", "reduce"]
