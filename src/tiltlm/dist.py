"""Data-parallel training with PyTorch's own distributed engine (launched by torchrun / accelerate launch).

One process per device. Every rank sees the same seeded global pairs of a step (`run.step_pairs`) and takes a
disjoint shard of them (`shard`: pairs[rank::world]); the loss is `sum of its pairs' losses / global pairs of the
step`, and the gradients are then SUM-all-reduced (`all_reduce_grads`). The result is exactly the single-process
gradient of the whole step, whatever the world size.

Why an explicit all-reduce and not torch.nn.parallel.DistributedDataParallel: the chunked log-prob path
(logps.py) calls the backbone and the LM head directly, bypassing the wrapped module's forward, so DDP's hooks
would not fire reliably. One flattened all-reduce after backward is simple, exact and as fast for our sizes.

Metrics: each rank keeps the sums of its own pairs; `reduce_window` gathers them so every rank holds the global
(pair- and token-weighted) sums before `compute()`. Only rank 0 writes files and logs (`prepare_run`, `rank_zero`).

With world size 1 (a plain `tilt train`) every function here is a no-op returning its input.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "none"  # none | ddp | fsdp

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CTX = DistContext()


def context() -> DistContext:
    return _CTX


def init(cfg) -> DistContext:
    """Join the process group torchrun set up (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA. Idempotent."""
    global _CTX
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CTX = DistContext()
        return _CTX
    import torch.distributed as tdist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not str(cfg.device).startswith("cpu")
    if not tdist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        tdist.init_process_group("nccl" if use_cuda else "gloo")
        atexit.register(lambda: tdist.is_initialized() and tdist.destroy_process_group())
    _CTX = DistContext(rank=rank, world=world, local_rank=local_rank, mode=getattr(cfg, "dist", "ddp"))
    return _CTX


def fsdp_enabled() -> bool:
    """Several ranks, each holding a shard of the model (fsdp.py); otherwise every rank holds all of it."""
    return _CTX.enabled and _CTX.mode == "fsdp"


def device(requested: str) -> torch.device:
    """The device of this rank: `cuda:LOCAL_RANK` under torchrun on GPUs, else what `requested` resolves to."""
    from .models import resolve_device

    dev = resolve_device(requested)
    if _CTX.enabled and dev.type == "cuda":
        return torch.device("cuda", _CTX.local_rank)
    return dev


def rank_zero(log: Callable) -> Callable:
    """`log` on rank 0, silence elsewhere (so N ranks do not print N copies of every line)."""
    return log if _CTX.is_main else (lambda *a, **k: None)


def barrier() -> None:
    if _CTX.enabled:
        torch.distributed.barrier()


# ----------------------------------------------------------------------------------------------- data and grads
def shard(items: Sequence[T]) -> list[T]:
    """This rank's disjoint share of the step's global pairs: every pair on exactly one rank."""
    return list(items) if not _CTX.enabled else list(items[_CTX.rank::_CTX.world])


def _comm_device(t_device: torch.device) -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else t_device


@torch.no_grad()
def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """SUM the gradients over ranks (each rank's loss is already divided by the GLOBAL pair count).

    A parameter that got a gradient on any rank gets one on every rank (zeros where it had none), so the optimizer
    treats it identically everywhere; a parameter no rank touched stays `grad is None`, as in one process.
    """
    if not _CTX.enabled or not params:
        return
    import torch.distributed as tdist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    dev = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=_comm_device(dev))
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
            flat = _flatten_dense_tensors(bucket)
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
def clip_grad_norm(params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
    """The global L2 norm of the gradients, then scale them so it is at most `max_norm` (as
    torch.nn.utils.clip_grad_norm_). Returns the norm before clipping.

    Summed in float64 over every parameter, and over the ranks' shards under FSDP, so the norm -- and therefore the
    clipping -- is the same to ~1e-12 whether the model is whole, replicated or sharded (torch's fp32 norm of DTensor
    shards differs from the unsharded one in the 6th digit)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    total = sum(float(torch.linalg.vector_norm(g, 2, dtype=torch.float64)) ** 2 for g in local)
    if fsdp_enabled():  # each rank holds a disjoint shard of every gradient
        total = sum_scalars(total)[0]
    norm = total ** 0.5
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0 and math.isfinite(norm):
        for g in local:
            g.mul_(coef)
    return norm


def all_true(flag: bool) -> bool:
    """True on every rank iff it is True on every rank (so all ranks skip or take the same step)."""
    if not _CTX.enabled:
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int32, device=_comm_device(torch.device("cpu")))
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item()) == 0


def max_int(value: int) -> int:
    """The largest `value` over ranks."""
    if not _CTX.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device(torch.device("cpu")))
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def sum_scalars(*values: float) -> list[float]:
    """Elementwise SUM of a few Python floats over ranks (float64)."""
    if not _CTX.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(torch.device("cpu")))
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()


def gather_objects(obj) -> list:
    """all_gather_object: every rank gets [obj of rank 0, obj of rank 1, ...]."""
    if not _CTX.enabled:
        return [obj]
    out = [None] * _CTX.world
    torch.distributed.all_gather_object(out, obj)
    return out


def reduce_window(window):
    """The MetricWindow of all ranks' pairs, on every rank: sums and counts added (pair- and token-weighted
    stay exact), per-pair lists concatenated in rank order. Step-level entries (grad norm, time) are already
    global and are kept from this rank."""
    if not _CTX.enabled:
        return window
    from .metrics import MetricWindow

    parts = gather_objects((window.n, window.sums, window.len_diff, window.margins))
    out = MetricWindow()
    for n, sums, len_diff, margins in parts:
        out.n += n
        for k, v in sums.items():
            out.sums[k] = out.sums.get(k, 0.0) + v
        out.len_diff += len_diff
        out.margins += margins
    out.grad_norms, out.step_seconds = list(window.grad_norms), list(window.step_seconds)
    return out


def sync_counters(state: dict, before: dict, *keys: str) -> None:
    """Running sums kept in the loop state (e.g. BCO's reward mean): add the other ranks' increments since
    `before`, so every rank holds the global value."""
    if not _CTX.enabled:
        return
    totals = sum_scalars(*(state[k] - before[k] for k in keys))
    for k, v in zip(keys, totals):
        state[k] = before[k] + (type(before[k])(v))


# ------------------------------------------------------------------------------------------- the run directory
def prepare_run(cfg, log: Callable = print):
    """RunDir on rank 0 (creates/cleans the folder, then the others go on); a write-nothing view elsewhere."""
    from .run import RunDir

    class MainRunDir(RunDir):
        def save_checkpoint(self, *a, **k):
            try:
                super().save_checkpoint(*a, **k)
            finally:
                barrier()  # the others resume only once the checkpoint is complete

    class WorkerRunDir(RunDir):
        """Rank > 0: same paths (to read checkpoints), writes nothing."""

        def write_json(self, name, obj): ...
        def _append(self, name, record): ...
        def truncate_metrics(self, after_step): ...
        def doctor(self, cfg): return None
        def progress(self, total, done): return _NoBar()
        def log_metrics(self, record, doctor, bar): ...
        def log_eval(self, record, doctor): return record
        def save_checkpoint(self, *a, **k):
            if fsdp_enabled():  # a collective: every rank writes its own shards
                try:
                    self._write_checkpoint(*a, **k)
                except OSError:
                    pass  # rank 0 reports it
            barrier()
        def finish(self, *a, **k): ...

    from .run import _NoBar

    if not _CTX.enabled:
        return RunDir.prepare(cfg, log)
    if _CTX.is_main:
        try:
            run = MainRunDir.prepare(cfg, log)
        finally:
            barrier()
        return run
    barrier()  # wait until rank 0 has validated / cleaned / created the folder
    if not Path(cfg.output_dir).expanduser().resolve().is_dir():
        from .config import ConfigError

        raise ConfigError(f"rank 0 could not prepare {cfg.output_dir}")
    return WorkerRunDir(Path(cfg.output_dir).expanduser().resolve(), cfg, lambda *a, **k: None)


# ------------------------------------------------------------------------------------- distributed reference pass
def cached_reference(model, model_fingerprint: str, dtype: str, pairs, *, cache_dir=None, batch_size: int = 8,
                     pad_token_id: int = 0, chunk_size: int = 1024, log=print, progress: bool = False):
    """reference.cached_reference, distributed: rank 0 looks the cache up; on a miss every rank scores its
    shard of the pairs, the shards are all-gathered, and rank 0 writes the table. Every rank ends with the same
    full table (no shared filesystem needed: a hit is broadcast from rank 0)."""
    from . import reference as R

    if not _CTX.enabled:
        return R.cached_reference(model, model_fingerprint, dtype, pairs, cache_dir=cache_dir,
                                  batch_size=batch_size, pad_token_id=pad_token_id, chunk_size=chunk_size, log=log,
                                  progress=progress)
    from .logps import score_pairs

    path = Path(cache_dir or R.default_cache_dir()) / f"ref-{R.cache_key(model_fingerprint, dtype, pairs)}.parquet"
    hit = None
    if _CTX.is_main and path.is_file():
        try:
            ref = R.CachedReference.load(path)
            if set(ref.row_of) == {p.index for p in pairs}:
                hit = ref.to_rows()
        except Exception as e:  # corrupt: recompute
            log(f"reference cache {path} unreadable ({e}); recomputing")
    box = [hit]
    torch.distributed.broadcast_object_list(box, src=0)
    if box[0] is not None:
        log(f"reference log-probs: cache hit {path}")
        return _table(box[0]), path, True
    log(f"reference log-probs: computing {len(pairs)} pairs on {_CTX.world} ranks -> {path}")
    mine = shard(pairs)
    lp = score_pairs(model, mine, batch_size=batch_size, pad_token_id=pad_token_id, chunk_size=chunk_size)
    rows = [dict(index=p.index, chosen_logp=float(lp.chosen[k]), rejected_logp=float(lp.rejected[k]),
                 chosen_tokens=int(lp.chosen_tokens[k]), rejected_tokens=int(lp.rejected_tokens[k]))
            for k, p in enumerate(mine)]
    order = {p.index: k for k, p in enumerate(pairs)}  # back to the order of `pairs`, as one process writes it
    table = _table(sorted((r for part in gather_objects(rows) for r in part), key=lambda r: order[r["index"]]))
    if _CTX.is_main:
        table.save(path, metadata={"model_fingerprint": model_fingerprint, "dtype": dtype, "pairs": len(pairs)})
    barrier()
    return table, path, False


def _table(rows: list[dict]):
    from .reference import CachedReference
    from .types import PairLogps

    col = lambda k: torch.tensor([float(r[k]) for r in rows], dtype=torch.float32)  # noqa: E731
    return CachedReference([int(r["index"]) for r in rows],
                           PairLogps(col("chosen_logp"), col("rejected_logp"), col("chosen_tokens"),
                                     col("rejected_tokens")))


# --------------------------------------------------------------------------------------------------- launcher
def launch(argv: list[str], nproc: int) -> int:
    """`tilt train --nproc N ...`: re-run this command under torchrun with N processes on this node."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tiltlm.cli", *argv]
    return subprocess.call(cmd)


def strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for k, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


__all__ = ["DistContext", "context", "init", "fsdp_enabled", "max_int", "device", "rank_zero", "barrier", "shard",
           "all_reduce_grads", "clip_grad_norm",
           "all_true", "sum_scalars", "gather_objects", "reduce_window", "sync_counters", "prepare_run",
           "cached_reference", "launch", "strip_nproc"]
