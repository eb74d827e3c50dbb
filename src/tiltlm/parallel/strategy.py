"""How the processes hold the model: chosen once (`choose`), then called by the training loop, which never asks.

* `Replicated` -- every process holds the whole model (DDP semantics). With one process it IS single-process
  training: every collective is the identity, nothing is a separate code path.
* `Sharded`    -- FSDP2: every process holds 1/N of each parameter, gradient and optimizer moment (fsdp.py).

The loop's contract, per optimizer step:

    calls = strategy.micro_calls(micro_batches(strategy.shard(pairs)))   # [(batch, real)]
    for k, (batch, real) in enumerate(calls):
        strategy.gradient_sync(policy, last=k == len(calls) - 1)
        ... forward with `policy` (a callable made by `strategy.wrap`), backward (weight 0 when not real) ...
    strategy.reduce_gradients(params); window = strategy.reduce(window)
    grad_norm = strategy.clip_grad_norm(params, max_norm); if strategy.all_true(finite): optimizer.step()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from safetensors.torch import load_model, save_file, save_model

from ..errors import ConfigError
from . import comm, fsdp

MODEL_FILE = "model.safetensors"
SHARDED_DIR = "sharded"


class Replicated:
    """Every process holds the whole model; gradients are SUM-all-reduced after backward (world size 1: no-op).

    Why an explicit all-reduce and not torch.nn.parallel.DistributedDataParallel: the chunked log-prob path calls
    the backbone and the LM head directly, bypassing the wrapped module's forward, so DDP's hooks would not fire
    reliably. One flattened all-reduce after backward is simple, exact and as fast for our sizes; it sums in fp32
    whatever the gradients' dtype."""

    def __init__(self, world: comm.World, compute_dtype: Optional[torch.dtype] = None):
        self.world = world
        self.compute_dtype = compute_dtype  # --bf16 / --fp16: the dtype the forward computes in (None: as stored)

    def describe(self) -> str:
        if not self.world.enabled:
            return "one process"
        return f"ddp: {self.world.size} processes, each holding the whole model"

    # ---------------------------------------------------------------------------------------------- data
    def shard(self, items: Sequence) -> list:
        return comm.shard(items)

    def micro_calls(self, batches: list, spare: Any = None) -> list[tuple[Any, bool]]:
        """[(batch, real)]: every batch once. (`spare` is for strategies whose forwards are collectives.)"""
        return [(b, True) for b in batches]

    def reduce(self, window):
        return comm.reduce(window)

    def all_true(self, flag: bool) -> bool:
        return comm.all_true(flag)

    # ---------------------------------------------------------------------------------------------- model
    def wrap(self, model: torch.nn.Module, fn: Callable) -> Callable:
        """`fn(model, batch)` as a callable of the batch alone (the same for a trained or a frozen model)."""
        return lambda batch: fn(model, batch)

    def gradient_sync(self, wrapped: Callable, last: bool) -> None:
        """Nothing to defer: gradients are all-reduced once per step by `reduce_gradients`."""

    def reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        comm.all_reduce_grads(params)

    def clip_grad_norm(self, params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
        return comm.clip_grad_norm(params, max_norm)

    def full_state_dict(self, model: torch.nn.Module) -> Optional[dict]:
        """The weights to save at the end; None = the model's own state dict (nothing to gather)."""
        return None

    # ---------------------------------------------------------------------------------------------- checkpoints
    def save_model_state(self, folder: Path, model, optimizer, weights: Optional[dict] = None) -> dict:
        """Write the model weights into `folder` (rank 0); return what goes into the checkpoint's state.pt.
        `weights`: a partial state dict to save instead of the whole model (a LoRA adapter)."""
        if self.world.is_main:
            if weights is None:
                save_model(model, str(folder / MODEL_FILE))
            else:
                save_file(weights, str(folder / MODEL_FILE), metadata={"tiltlm": "adapter weights only"})
        return {"optimizer": optimizer.state_dict()}

    def load_model_state(self, folder: Path, model, optimizer, state: dict) -> None:
        """Whole-model checkpoints load on any number of processes; sharded (FSDP) ones are re-assembled by
        torch.distributed.checkpoint, so a run sharded over N ranks resumes here too."""
        if (folder / SHARDED_DIR).is_dir():
            fsdp.load_state(folder / SHARDED_DIR, model, optimizer)
            return
        _, unexpected = load_model(model, str(folder / MODEL_FILE), strict=False)
        if unexpected:
            raise ConfigError(f"checkpoint {folder} has weights this model does not: {sorted(unexpected)[:5]}")
        optimizer.load_state_dict(state["optimizer"])


class Sharded(Replicated):
    """FSDP2 (`--dist fsdp`): parameters, gradients and optimizer state sharded over the processes."""

    def describe(self) -> str:
        return f"fsdp: policy sharded over {self.world.size} ranks"

    def micro_calls(self, batches: list, spare: Any = None) -> list[tuple[Any, bool]]:
        """As many forward calls on every rank (FSDP's all-gathers are collectives): a rank with fewer
        micro-batches repeats its first one -- or `spare` when it has none -- as zero-weight padding calls."""
        most = comm.max_int(len(batches))
        filler = batches[0] if batches else spare
        if filler is None and most > len(batches):
            raise RuntimeError("fsdp: a rank has no micro-batch to pad its collective calls with")
        return [(b, True) for b in batches] + [(filler, False)] * (most - len(batches))

    def wrap(self, model: torch.nn.Module, fn: Callable) -> Callable:
        return fsdp.shard_model(model, fn, compute_dtype=self.compute_dtype)

    def gradient_sync(self, wrapped: Callable, last: bool) -> None:
        """Reduce-scatter only after the last micro-batch of a step (the others accumulate locally)."""
        wrapped.set_requires_gradient_sync(last)

    def reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Nothing left to do: FSDP reduce-scattered the gradients during the last backward."""

    def clip_grad_norm(self, params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
        return comm.clip_grad_norm(params, max_norm, sharded=True)

    def full_state_dict(self, model: torch.nn.Module) -> Optional[dict]:
        return fsdp.full_state_dict(model)

    def save_model_state(self, folder: Path, model, optimizer, weights: Optional[dict] = None) -> dict:
        fsdp.save_state(folder / SHARDED_DIR, model, optimizer)  # every rank writes its shards
        return {"world_size": self.world.size}

    def load_model_state(self, folder: Path, model, optimizer, state: dict) -> None:
        if not (folder / SHARDED_DIR).is_dir():
            raise ConfigError(f"checkpoint {folder} holds whole-model weights (written without --dist fsdp): "
                              "resume it with --dist ddp or in one process; it cannot be sharded on load yet")
        fsdp.load_state(folder / SHARDED_DIR, model, optimizer)


STRATEGIES = {"ddp": Replicated, "fsdp": Sharded}


def choose(dist: str, device: str = "auto", timeout_s: int = 1800,
           compute_dtype: Optional[torch.dtype] = None) -> Replicated:
    """Join the process group (if launched by torchrun) and pick the strategy. One process is always
    `Replicated` with world size 1, whatever `dist` says (there is nothing to shard over)."""
    world = comm.init(device, timeout_s)
    if dist not in STRATEGIES:
        raise ConfigError(f"dist must be one of {', '.join(STRATEGIES)}, got {dist!r}")
    return (STRATEGIES[dist] if world.enabled else Replicated)(world, compute_dtype)


__all__ = ["Replicated", "Sharded", "STRATEGIES", "choose"]
