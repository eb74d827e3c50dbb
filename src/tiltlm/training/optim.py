"""The optimizer, the learning-rate schedule and the run length."""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig


def total_steps(cfg: TrainConfig, n_pairs: int, pairs_per_step: int) -> int:
    """--max-steps if given, else num_train_epochs over the data (a partial last step counts as a step)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.num_train_epochs * math.ceil(n_pairs / pairs_per_step)))


def schedule(optimizer, cfg: TrainConfig, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then linear decay to 0 / cosine decay to 0 / constant."""
    warmup = cfg.warmup_steps or int(math.ceil(cfg.warmup_ratio * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.lr_scheduler_type == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if cfg.lr_scheduler_type == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, total: int):
    """(trainable parameters, AdamW over them, the LR schedule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    return params, optimizer, schedule(optimizer, cfg, total)
