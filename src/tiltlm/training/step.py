"""One micro-batch through the model and the loss, and one optimizer step's worth of them (forward + backward)."""

from __future__ import annotations

from typing import Optional

import torch

from ..core.logps import sequence_logps
from ..core.losses import LossHParams, compute_loss
from ..core.metrics import MetricWindow
from ..types import LossOutput, PairLogps
from .setup import Setup
from .state import RewardMean


def forward_pairs(s: Setup, batch, hp: LossHParams, reference=None
                  ) -> tuple[PairLogps, Optional[PairLogps], LossOutput]:
    """Policy log-probs, reference log-probs and the loss of one micro-batch (training reference by default)."""
    reference = reference or s.reference
    policy = sequence_logps(s.policy(batch), batch)
    ref = reference(batch) if reference is not None else None
    return policy, ref, compute_loss(s.cfg.loss_type, s.cfg.loss_weights, policy, ref, hp)


def backward_step(s: Setup, pairs: list, hp: LossHParams, loss_scale: float = 1.0
                  ) -> tuple[MetricWindow, RewardMean, bool]:
    """Forward and backward this process's share of one step's pairs, micro-batch by micro-batch.

    Each micro-batch backpropagates sum(its losses) / (pairs in the whole step), so the accumulated gradient is the
    step's mean-loss gradient whatever the split (and, summed over processes, whatever the number of processes).
    `loss_scale` multiplies what is backpropagated (fp16 loss scaling; the caller divides the gradients back).
    Returns this process's metric window and reward sums, and whether every loss was finite."""
    cfg, strategy = s.cfg, s.strategy
    window, rewards, finite = MetricWindow(), RewardMean(), True
    batches = s.path.micro_batches(strategy.shard(pairs), batch_size=cfg.per_device_train_batch_size,
                                   pad_token_id=s.tokenizer.pad_token_id)
    # a process with no pairs in a short last step still owes its collective calls (FSDP): it pads with a spare
    spare = None if batches else s.path.micro_batches(pairs[:1], batch_size=1, pad_token_id=s.tokenizer.pad_token_id)[0]
    calls = strategy.micro_calls(batches, spare=spare)
    for k, (batch, real) in enumerate(calls):
        strategy.gradient_sync(s.policy, last=k == len(calls) - 1)
        policy, ref, out = forward_pairs(s, batch.to(s.device), hp)
        # a padding call (real=False) only keeps the collectives matched: it weighs nothing
        (out.losses.sum() * (loss_scale if real else 0.0) / len(pairs)).backward()
        if real:
            window.add(policy, ref, out)
            rewards.add(out)
            finite = finite and bool(torch.isfinite(out.losses.detach()).all())
    return window, rewards, finite
