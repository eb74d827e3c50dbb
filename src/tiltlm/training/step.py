"""One micro-batch through the model and the loss, and one optimizer step's worth of them (forward + backward)."""

from __future__ import annotations

from typing import Optional

import torch

from ..core.logps import sequence_logps, token_log_sum_sq_probs
from ..core.losses import LossHParams, compute_loss
from ..core.metrics import MetricWindow
from ..types import LossOutput, PairLogps
from .setup import Setup


def forward_pairs(s: Setup, batch, hp: LossHParams, reference=None
                  ) -> tuple[PairLogps, Optional[PairLogps], LossOutput]:
    """Policy log-probs, reference log-probs and the loss of one micro-batch (training reference by default)."""
    reference = reference or s.reference
    token_lp = s.policy(batch)
    policy = sequence_logps(token_lp, batch, log_sum_sq=wpo_log_sum_sq(s, batch) if hp.use_weighting else None)
    ref = reference(batch) if reference is not None else None
    return policy, ref, compute_loss(s.cfg.loss_type, s.cfg.loss_weights, policy, ref, hp)


def wpo_log_sum_sq(s: Setup, batch) -> torch.Tensor:
    """WPO's per-token log sum_v p_v^2 of the policy: a no-grad forward of the same batch in the run's precision
    (the weights are detached in TRL too, so a second forward gives exactly its numbers)."""
    with s.path.precision.autocast():
        return token_log_sum_sq_probs(s.model, batch, chunked=s.path.chunked, chunk_size=s.path.chunk_size)


def backward_step(s: Setup, pairs: list, hp: LossHParams, loss_scale: float = 1.0
                  ) -> tuple[MetricWindow, bool]:
    """Forward and backward this process's share of one step's pairs, micro-batch by micro-batch.

    Each micro-batch backpropagates sum(its losses) / (pairs in the whole step), so the accumulated gradient is the
    step's mean-loss gradient whatever the split (and, summed over processes, whatever the number of processes).
    `loss_scale` multiplies what is backpropagated (fp16 loss scaling; the caller divides the gradients back).
    Returns this process's metric window and whether every loss was finite."""
    cfg, strategy = s.cfg, s.strategy
    window, finite = MetricWindow(), True
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
            finite = finite and bool(torch.isfinite(out.losses.detach()).all())
    return window, finite
