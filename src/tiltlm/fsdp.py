"""Fully sharded data parallelism (FSDP2, `torch.distributed.fsdp.fully_shard`) for `--dist fsdp`.

Each rank holds 1/N of every parameter, gradient and AdamW moment; a transformer block's full weights exist only
while that block runs (all-gathered before its forward and again for its backward, then freed).

Layout: one FSDP unit per transformer block (the classes the model lists in `_no_split_modules`), and one root
unit, `LogpsRoot`, around the whole model. The root exists because our log-prob path does not call the model's
own forward: it runs the backbone and then the LM head chunk by chunk (logps.py). Wrapping that whole computation
in one module's forward lets FSDP gather the root's parameters (embeddings, final norm, LM head -- tied or not)
for exactly the span that uses them, and reduce-scatter their gradients with its own hooks. `logps.token_logps`
finds the root through `model.__dict__["_tilt_fsdp_root"]` and calls it, so the rest of tiltlm passes the plain
Hugging Face model around as before.

Exactness: every rank's loss is `sum of its pairs' losses / pairs of the whole step` (as under DDP, dist.py), so
the exact gradient is the SUM over ranks; FSDP's default is the mean, so the divide factor is set to 1.
FSDP's collectives need every rank to make the same number of forward calls: `pad_calls` repeats a rank's
first micro-batch with zero weight where packing gave it fewer micro-batches than another rank.

Checkpoints are sharded: torch.distributed.checkpoint (DCP) writes each rank's shards of the model and optimizer
into `checkpoint-N/sharded/`, rank 0 adds the scheduler, RNG and loop state, and the folder is sealed with the
same checksummed manifest and atomic rename as a single-process checkpoint (checkpoint.py). The final model is
gathered to rank 0 and saved as a normal Hugging Face folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from . import checkpoint as ckpt
from . import dist

ROOT_ATTR = "_tilt_fsdp_root"
SHARDED = "sharded"


class LogpsRoot(nn.Module):
    """The FSDP root unit: one call = backbone + LM head -> per-completion-token log-probs (see module doc)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, chunked: bool, chunk_size: int) -> torch.Tensor:
        from .logps import unsharded_token_logps

        return unsharded_token_logps(self.model, batch, chunked=chunked, chunk_size=chunk_size)


def root_of(model: nn.Module) -> Optional[nn.Module]:
    return model.__dict__.get(ROOT_ATTR)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_model(model: nn.Module) -> nn.Module:
    """fully_shard each transformer block, then the LogpsRoot around the model; returns `model` (now sharded)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from .config import ConfigError

    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError(f"--dist fsdp: cannot find the transformer blocks of {type(model).__name__} "
                          "(it lists no _no_split_modules); use --dist ddp")
    for block in blocks:
        fully_shard(block)
    root = LogpsRoot(model)
    fully_shard(root)
    for m in root.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # SUM over ranks: each rank's loss is already / global pairs
            m.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
    model.__dict__[ROOT_ATTR] = root  # not a submodule: the root contains the model, not the other way round
    return model


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Reduce-scatter only after the last micro-batch of a step (gradients of the others accumulate locally)."""
    root = root_of(model)
    if root is not None:
        root.set_requires_gradient_sync(sync)


def pad_calls(batches: list) -> list[tuple[object, bool]]:
    """[(batch, real)]: under FSDP as many entries on every rank, padding entries repeating a batch (they must
    weigh zero); otherwise every batch once, all real."""
    if not dist.fsdp_enabled():
        return [(b, True) for b in batches]
    n = len(batches)
    most = int(dist.max_int(n))
    if n == 0 and most > 0:
        raise RuntimeError("fsdp: a rank has no micro-batch to pad with")  # cannot happen: every rank gets pairs
    return [(b, True) for b in batches] + [(batches[0], False)] * (most - n)


def full_state_dict(model: nn.Module) -> dict:
    """The whole model's weights on rank 0 (CPU), {} elsewhere; a collective: call it on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # a tied parameter (LM head = embeddings) comes back under both names; keep the one save_pretrained expects
    first = {n for n, _ in model.named_parameters()}
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - first
    return {k: v for k, v in full.items() if k not in aliases}


# ------------------------------------------------------------------------------------------- sharded checkpoints
def save_checkpoint(ckpt_root: Path, step: int, *, model, optimizer, scheduler, loop_state: dict,
                    total_limit: int = 2) -> Optional[Path]:
    """Every rank writes its shards; rank 0 writes the rest and seals the folder. A collective. Raises OSError on
    every rank if any rank's write failed (the temporary folder is removed, earlier checkpoints untouched)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    ctx = dist.context()
    final = ckpt_root / f"checkpoint-{step}"
    tmp = ckpt_root / f".tmp-checkpoint-{step}"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    error = None
    try:
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / SHARDED))
    except OSError as e:
        error = e
    if not dist.all_true(error is None):
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise error or OSError(f"another rank failed to write its shards of checkpoint-{step}")
    path = None
    if ctx.is_main:
        try:
            torch.save({"scheduler": scheduler.state_dict(), "rng": ckpt.rng_state(), "world_size": ctx.world},
                       tmp / "state.pt")
            (tmp / "loop_state.json").write_text(json.dumps(loop_state, indent=1))
            path = ckpt.seal(tmp, final, ckpt_root, step, total_limit)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    dist.barrier()
    return path


def is_sharded(ckpt_dir: Path) -> bool:
    return (ckpt_dir / SHARDED).is_dir()


def load_checkpoint(ckpt_dir: Path, *, model, optimizer, scheduler) -> dict:
    """Restore this rank's shards (DCP re-shards, so the world size may differ), scheduler, RNG; the loop state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(ckpt_dir / SHARDED))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    rest = torch.load(ckpt_dir / "state.pt", weights_only=True)
    scheduler.load_state_dict(rest["scheduler"])
    ckpt.set_rng_state(rest["rng"])
    return json.loads((ckpt_dir / "loop_state.json").read_text())


__all__ = ["LogpsRoot", "root_of", "transformer_blocks", "shard_model", "set_gradient_sync", "pad_calls",
           "full_state_dict", "save_checkpoint", "is_sharded", "load_checkpoint"]
