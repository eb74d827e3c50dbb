"""TR-DPO: a reference that follows the policy (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good
Alignment", arXiv:2404.09656).

Every `ref_model_sync_steps` optimizer steps, theta_ref <- alpha * theta_policy + (1 - alpha) * theta_ref
(alpha = `ref_model_mixup_alpha`; alpha = 1 is the hard update). It needs a live reference
(`--no-precompute-ref-log-probs`): a separate frozen model, or -- for a LoRA policy -- the frozen "reference"
adapter inside the policy, which the adapter's own weights are mixed into.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..model import lora
from ..model.reference import LiveReference


def due(step: int, every: int) -> bool:
    """Whether the reference is synced after optimizer step `step` (1-based)."""
    return step % every == 0


@torch.no_grad()
def sync_reference(reference: LiveReference, policy: torch.nn.Module, alpha: float) -> None:
    """Mix the policy into the reference: the reference adapter (LoRA), else the separate reference model."""
    if reference.shares_policy:
        lora.mix_into_reference_adapter(policy, alpha)
        return
    for p_ref, p in zip(reference.model.parameters(), policy.parameters()):
        p_ref.mul_(1 - alpha).add_(p.detach().to(p_ref.dtype), alpha=alpha)


def moving_reference_model(reference) -> Optional[torch.nn.Module]:
    """The separate reference model that TR-DPO changes during training (checkpoints must hold it), else None.
    (A LoRA reference adapter lives inside the policy and is checkpointed with it.)"""
    if isinstance(reference, LiveReference) and not reference.shares_policy:
        return reference.model
    return None
