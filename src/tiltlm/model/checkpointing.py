"""Activation checkpointing chosen by a memory budget: how many decoder layers recompute their forward in backward.

A checkpointed layer keeps only its input for backward and runs its forward again there (exact: the same forward,
the same numbers); a layer that is not keeps everything its backward needs. `--activation-memory-budget` bounds what
the decoder layers keep for backward at the run's largest micro-batch, and as few layers as fit it are checkpointed
(fewer recomputes, a faster step).

The cost of a layer is MEASURED, not modelled: one forward of the run's own scoring path (its layout, masks and
autocast) on the largest micro-batch, under `torch.autograd.graph.saved_tensors_hooks`, counts the bytes of the
unique storages each layer saves for backward (weights and their autocast copies excluded). The forward stops after
the last layer of a kind not yet seen: layers of one class and size save the same bytes, so for most models one
layer runs. The earliest layers are checkpointed first: their activations are made first and used last, so they
are the ones held longest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from ..config import MemoryBudget

MB = 1e6
AUTO_HEADROOM = 0.9  # "auto" plans with 90% of the free memory: the LM head's chunks, the loss, allocator slack


@dataclass(frozen=True)
class ActivationCosts:
    """Bytes the decoder layers keep for backward at one micro-batch, per layer."""
    saved: tuple[int, ...]  # what each layer keeps when it is not checkpointed (all its backward needs)
    inputs: tuple[int, ...]  # what each keeps when it is: its input hidden states
    shared: int  # tensors every layer reads and saves, held once for the whole stack (the mask, rotary cos/sin)

    @property
    def num_layers(self) -> int:
        return len(self.saved)

    def kept(self, k: int) -> int:
        """The peak with the first `k` layers checkpointed: at the start of backward (the checkpointed layers'
        inputs and everything the others saved), or while checkpointed layer i is recomputed (the inputs of the
        layers before it and what layer i saves again; the later layers' tensors are freed by then)."""
        recompute = max((self.shared + sum(self.inputs[:i]) + self.saved[i] for i in range(k)), default=0)
        return max(self.at_backward_start(k), recompute)

    def at_backward_start(self, k: int) -> int:
        """What the layers hold when the forward ends, the first `k` checkpointed."""
        return self.shared + sum(self.inputs[:k]) + sum(self.saved[k:])

    def layers_to_checkpoint(self, budget: int) -> int:
        """The fewest leading layers to checkpoint so that `kept` fits `budget` (all of them if nothing fits)."""
        return next((k for k in range(self.num_layers + 1) if self.kept(k) <= budget), self.num_layers)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks that carry transformers' per-layer `gradient_checkpointing` flag, in forward order."""
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


class _Measured(Exception):
    """Raised after the last layer that had to be measured: the rest of the forward is not needed."""


def measure(model: torch.nn.Module, batch, forward: Callable) -> ActivationCosts:
    """What each decoder layer of `model` saves for backward when `forward(batch)` runs (train mode, grad on)."""
    layers = decoder_layers(model)
    kinds = [(type(m).__name__, sum(p.numel() for p in m.parameters())) for m in layers]
    first_of_kind = {kind: kinds.index(kind) for kind in kinds}
    last = max(first_of_kind.values())
    at = {m: i for i, m in enumerate(layers)}
    weights = {_key(t) for t in [*model.parameters(), *model.buffers()]}
    weight_shapes = {tuple(p.shape) for p in model.parameters()}  # an autocast copy of a weight has its shape
    saved: dict[int, dict[int, int]] = {}
    inputs: dict[int, int] = {}
    shared: dict[int, int] = {}  # storage -> bytes of tensors handed to every layer (kwargs and extra args)
    state: dict = {"layer": None, "held": []}

    def before(module, args, kwargs):
        i = at[module]
        hidden = args[0] if args else kwargs.get("hidden_states")
        inputs[i] = _bytes(hidden) if isinstance(hidden, torch.Tensor) else 0
        for t in _tensors([*args[1:], *kwargs.values()]):
            shared[_key(t)] = _bytes(t)
        state["layer"] = i
        saved[i] = {}

    def after(module, args, kwargs, output):
        state["layer"], state["held"] = None, []
        if at[module] == last:
            raise _Measured

    def pack(t: torch.Tensor):
        i = state["layer"]
        key = _key(t)
        if i is not None and key not in weights and key not in shared and tuple(t.shape) not in weight_shapes:
            saved[i][key] = _bytes(t)
            state["held"].append(t)  # alive until its layer ends: a freed address reused would count twice
        return None  # never unpacked: no backward runs on this graph

    def unpack(_):
        raise RuntimeError("the measuring forward has no backward")

    handles = [h for m in layers[:last + 1] for h in (m.register_forward_pre_hook(before, with_kwargs=True),
                                                      m.register_forward_hook(after, with_kwargs=True))]
    was_training = model.training
    flags = [m.gradient_checkpointing for m in layers]
    model.train()
    checkpoint_first(model, 0)  # inside a checkpointed layer the checkpoint's own hooks would hide its tensors
    device = batch.input_ids.device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad(), \
                torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            try:
                forward(batch)
            except _Measured:
                pass
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(layers, flags):
            m.gradient_checkpointing = flag
        model.train(was_training)
    # a shared tensor counts once, and only if some layer saved it (the shared dict holds every one handed over)
    per_layer = [sum(saved[first_of_kind[kind]].values()) for kind in kinds]
    # the shared tensors count once, whether or not a layer saves them: the mask and cos/sin are a few bytes per
    # token next to the layers' own tensors, and the model's forward holds them to the end of the stack anyway
    return ActivationCosts(saved=tuple(per_layer), inputs=tuple(inputs[first_of_kind[k]] for k in kinds),
                           shared=sum(shared.values()))


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()  # a view keeps its whole storage alive


def _tensors(values: Sequence) -> list[torch.Tensor]:
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            out.extend(_tensors(v))
    return out


def checkpoint_first(model: torch.nn.Module, k: int) -> None:
    """Keep transformers' checkpointing (already enabled for all) on the first `k` decoder layers only."""
    for i, layer in enumerate(decoder_layers(model)):
        layer.gradient_checkpointing = i < k


def budget_bytes(budget: MemoryBudget, costs: ActivationCosts, model: torch.nn.Module, device: torch.device,
                 reserved: int = 0) -> int:
    """The budget in bytes: as given; a fraction of what the layers keep without checkpointing; or "auto": the
    free memory of the device after the gradients, AdamW's state and `reserved` bytes (a live reference's weights,
    loaded later), with headroom."""
    if budget.bytes is not None:
        return budget.bytes
    if budget.fraction is not None:
        return int(budget.fraction * costs.kept(0))
    return int(AUTO_HEADROOM * free_memory(device)) - optimizer_bytes(model) - reserved


def optimizer_bytes(model: torch.nn.Module) -> int:
    """Gradients (the weights' dtype) and AdamW's two fp32 moments, plus an fp32 master copy of low-precision
    weights (training/optim.py): allocated at the first step, after this decision."""
    total = 0
    for p in model.parameters():
        if p.requires_grad:
            total += p.numel() * (p.element_size() + 8 + (4 if p.dtype != torch.float32 else 0))
    return total


def free_memory(device: torch.device) -> int:
    """Free bytes now: the CUDA device's (mem_get_info), else the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    for line in meminfo.read_text().splitlines() if meminfo.is_file() else ():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("no /proc/meminfo to read the available memory from")


def megabytes(n: int) -> str:
    return f"{n / MB:,.0f} MB" if n >= 10 * MB else f"{n / MB:.2g} MB"


def largest_micro_batch(batches: Sequence) -> Optional[object]:
    """The micro-batch with the most (padded) tokens: every layer's activations scale with them."""
    return max(batches, key=lambda b: b.input_ids.numel(), default=None)


def checkpoint_within_budget(model: torch.nn.Module, batch, forward: Callable, budget: MemoryBudget,
                             log: Callable[[str], None], reserved: int = 0) -> Optional[int]:
    """Measure, choose and apply: checkpoint the fewest leading decoder layers whose activations at `batch` (the
    run's largest micro-batch) fit `budget`, with transformers' checkpointing already enabled on every layer.
    Returns how many layers are checkpointed (None: the model has no per-layer flags)."""
    layers = decoder_layers(model)
    if not layers:
        log(f"note: {type(model).__name__} has no per-layer checkpointing flags: every block is checkpointed")
        return None
    costs = measure(model, batch, forward)
    limit = budget_bytes(budget, costs, model, batch.input_ids.device, reserved)
    k = costs.layers_to_checkpoint(limit)
    checkpoint_first(model, k)
    shown = budget.text if budget.bytes is not None else f"{budget.text}: {megabytes(max(limit, 0))}"
    log(f"checkpointing {k} of {len(layers)} layers (budget {shown}, ~{megabytes(max(costs.saved))} per layer at "
        f"the longest micro-batch of {batch.input_ids.numel()} tokens; ~{megabytes(costs.kept(k))} kept for "
        "backward)")
    if costs.kept(k) > limit:
        log(f"warning: even with every layer checkpointed the layers keep ~{megabytes(costs.kept(k))} for "
            "backward, more than the budget")
    return k
