"""Fully sharded data parallelism (FSDP2, `torch.distributed.fsdp.fully_shard`) for `--dist fsdp`.

Each rank holds 1/N of every parameter, gradient and AdamW moment; a transformer block's full weights exist only
while that block runs (all-gathered before its forward and again for its backward, then freed).

Layout: one FSDP unit per transformer block (the classes the model lists in `_no_split_modules`), and one root
unit, `ShardedRoot`, around the whole model. The root exists because tiltlm's log-prob computation does not call
the model's own forward: it runs the backbone and then the LM head chunk by chunk. The caller hands that
computation in as `fn(model, batch)`; running it inside one module's forward lets FSDP gather the root's
parameters (embeddings, final norm, LM head -- tied or not) for exactly the span that uses them and reduce-scatter
their gradients with its own hooks. This module never learns what `fn` computes.

Exactness: every rank's loss is `sum of its pairs' losses / pairs of the whole step`, so the exact gradient is the
SUM over ranks; FSDP's default is the mean, so the divide factor is set to 1.

Sharded checkpoints: torch.distributed.checkpoint (DCP) writes each rank's shards of the model and optimizer into a
folder (`save_state`); the caller seals that folder with its manifest like any checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import ConfigError


class ShardedRoot(nn.Module):
    """The FSDP root unit: `root(batch)` = `fn(model, batch)`, with the root's parameters gathered around it."""

    def __init__(self, model: nn.Module, fn: Callable):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch):
        return self.fn(self.model, batch)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_model(model: nn.Module, fn: Callable, compute_dtype: Optional[torch.dtype] = None) -> ShardedRoot:
    """fully_shard each transformer block, then a ShardedRoot around the model; returns the root (call it with a
    batch). `model` itself is sharded in place and stays the object optimizers and state dicts see.

    With `compute_dtype` (--bf16 / --fp16) the sharded fp32 parameters are the master weights: FSDP all-gathers
    them cast to `compute_dtype` for the forward and backward, and reduce-scatters the gradients in fp32
    (MixedPrecisionPolicy)."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError(f"--dist fsdp: cannot find the transformer blocks of {type(model).__name__} "
                          "(it lists no _no_split_modules); use --dist ddp")
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if compute_dtype else None
    kw = {"mp_policy": policy} if policy else {}
    for block in blocks:
        fully_shard(block, **kw)
    root = ShardedRoot(model, fn)
    fully_shard(root, **kw)
    for m in root.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # SUM over ranks: each rank's loss is already / global pairs
            m.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
    return root


def full_state_dict(model: nn.Module) -> dict:
    """The whole model's weights on rank 0 (CPU), {} elsewhere; a collective: call it on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # a tied parameter (LM head = embeddings) comes back under both names; keep the one save_pretrained expects
    first = {n for n, _ in model.named_parameters()}
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - first
    return {k: v for k, v in full.items() if k not in aliases}


def save_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the model and optimizer into `folder` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(folder))


def load_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore this rank's shards from `folder` (DCP re-shards, so the world size may differ)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


__all__ = ["ShardedRoot", "transformer_blocks", "shard_model", "full_state_dict", "save_state", "load_state"]
