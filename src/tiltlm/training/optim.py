"""The optimizer, the learning-rate schedule and the run length.

Low-precision weights (`--dtype bfloat16` / `float16`) never lose an update: at DPO learning rates an AdamW step is
far below half a bf16 ulp of most weights (std-0.02 weights: ulp ~1.5e-4, a step ~5e-7), so stepping the bf16
weights directly rounds nearly every update away. `MasterWeightAdamW` keeps an fp32 master copy of each
low-precision parameter in its state (DeepSpeed's bf16 optimizer does the same), steps the master in fp32 and
writes its rounding back into the weight. Memory per such parameter: 2 (weight) + 2 (gradient) + 4 (master) +
8 (fp32 AdamW moments) = 16 bytes, the same as fp32 training, with the forward reading half the bytes.
`UpdateProbe` measures, on a fixed sample of weights, how much of the optimizer's intended update the stored
weights actually kept (the doctor's `rounded_updates` check reads it).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from transformers import get_scheduler

from ..config import TrainConfig, ratio_steps
from ..errors import ConfigError


def total_steps(cfg: TrainConfig, n_pairs: int, pairs_per_step: int) -> int:
    """--max-steps if given, else num_train_epochs over the data (a partial last step counts as a step)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.num_train_epochs * math.ceil(n_pairs / pairs_per_step)))


def schedule(optimizer, cfg: TrainConfig, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers.get_scheduler's schedule of that name (TRL's meaning, warmup included: linear warm-up from 0
    over warmup_steps, a value < 1 being a fraction of the run, else warmup_ratio of the run), with
    lr_scheduler_kwargs as its own keywords."""
    warmup = ratio_steps(cfg.warmup_steps, total) if cfg.warmup_steps else int(math.ceil(cfg.warmup_ratio * total))
    try:
        return get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total,
                             scheduler_specific_kwargs=dict(cfg.lr_scheduler_kwargs) or None)
    except (TypeError, ValueError) as e:  # a keyword the schedule does not take, a missing required one
        raise ConfigError(f"lr_scheduler_type {cfg.lr_scheduler_type} with lr_scheduler_kwargs "
                          f"{dict(cfg.lr_scheduler_kwargs)}: {e}") from None


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, total: int):
    """(trainable parameters, AdamW over them -- with fp32 master weights where a parameter is stored in low
    precision -- and the LR schedule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = MasterWeightAdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay, fused=can_fuse(params))
    return params, optimizer, schedule(optimizer, cfg, total)


def can_fuse(params: Sequence[torch.nn.Parameter]) -> Optional[bool]:
    """torch's fused AdamW (one vectorised kernel over each tensor) where it applies: plain (not sharded) fp32 /
    low-precision tensors on CPU or CUDA. On CPU torch's default is the per-tensor loop of ~10 elementwise ops,
    each a pass over memory: for SmolLM2-135M that loop took ~2.6 s of a step on a 2-core EPYC, the fused kernel
    a fraction of it (docs/benchmarks.md, issue 20). Same update rule; None = torch's default choice."""
    plain = all(not hasattr(p, "placements") and p.device.type in ("cpu", "cuda") for p in params)
    return True if params and plain else None


def is_low_precision(p: torch.Tensor) -> bool:
    return p.dtype in (torch.bfloat16, torch.float16)


class MasterWeightAdamW(torch.optim.AdamW):
    """torch's AdamW; a low-precision parameter is stepped through its fp32 master copy (state["master"]), so its
    moments are fp32 too. For fp32 parameters it is exactly torch.optim.AdamW."""

    @torch.no_grad()
    def step(self, closure=None):
        swapped = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or not is_low_precision(p):
                    continue
                state = self.state[p]
                master = state["master"] if "master" in state else p.detach().float()
                swapped.append((p, p.data, p.grad))
                p.data, p.grad = master, p.grad.float()  # AdamW now sees (and creates state for) an fp32 tensor
        try:
            loss = super().step(closure)
        finally:
            for p, low, grad in swapped:
                self.state[p]["master"] = p.data
                low.copy_(p.data)  # the weight is the master rounded to nearest; the master keeps the rest
                p.data, p.grad = low, grad
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts loaded state to each parameter's dtype: seen as fp32 here, the master and moments stay fp32
        low = [p for group in self.param_groups for p in group["params"] if is_low_precision(p)]
        stored = [p.data for p in low]
        for p in low:
            p.data = p.data.float()
        try:
            super().load_state_dict(state_dict)
        finally:
            for p, data in zip(low, stored):
                p.data = data


class UpdateProbe:
    """How much of AdamW's intended update the stored weights kept, on a fixed sample of entries.

    Before a step it reads the sampled entries of what holds the weights (the fp32 master where there is one);
    after it, the applied change is compared with the change AdamW computed, rebuilt in fp64 from its state
    (decoupled weight decay + bias-corrected m / (sqrt(v) + eps)): kept = <applied, intended> / |intended|^2,
    1.0 when nothing is lost, ~0 when the updates are rounded away."""

    def __init__(self, params: Sequence[torch.nn.Parameter], per_tensor: int = 1024, tensors: int = 8,
                 seed: int = 0):
        local = [p for p in params if p.numel() > 0 and not hasattr(p, "placements")]  # sharded DTensors: not probed
        largest = sorted(local, key=lambda p: -p.numel())[:tensors]
        g = torch.Generator().manual_seed(seed)
        self.sample = [(p, torch.randint(p.numel(), (min(per_tensor, p.numel()),), generator=g).to(p.device))
                       for p in largest]
        self._before: list[torch.Tensor] = []

    @staticmethod
    def _held(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> torch.Tensor:
        return optimizer.state.get(p, {}).get("master", p)

    @torch.no_grad()
    def before(self, optimizer: torch.optim.Optimizer) -> None:
        self._before = [self._held(optimizer, p).detach().reshape(-1)[idx].double() for p, idx in self.sample]

    @torch.no_grad()
    def kept(self, optimizer: torch.optim.Optimizer) -> Optional[float]:
        """Fraction of the intended update kept by the step just taken; None if the sample had none to take."""
        group_of = {p: g for g in optimizer.param_groups for p in g["params"]}
        dot = norm2 = 0.0
        for (p, idx), before in zip(self.sample, self._before):
            state, group = optimizer.state.get(p, {}), group_of[p]
            if "exp_avg" not in state or p.grad is None:
                continue
            t = float(state["step"])
            beta1, beta2 = group["betas"]
            m = state["exp_avg"].reshape(-1)[idx].double() / (1 - beta1 ** t)
            v = state["exp_avg_sq"].reshape(-1)[idx].double()
            intended = -group["lr"] * (group["weight_decay"] * before
                                       + m / (v.sqrt() / math.sqrt(1 - beta2 ** t) + group["eps"]))
            applied = self._held(optimizer, p).detach().reshape(-1)[idx].double() - before
            dot += float((applied * intended).sum())
            norm2 += float((intended * intended).sum())
        return dot / norm2 if norm2 > 0 else None
