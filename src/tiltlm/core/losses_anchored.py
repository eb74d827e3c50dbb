"""Anchored losses: functions of each response's own reward r = beta * log(pi/ref), not only of their difference.

Each anchors the chosen and the rejected reward separately (at 0, the reference, or at a shift), so TRL's
f_divergence_type does not apply to them (the f-DPO log Z(x) term would not cancel). Notation: core/loss_spec.py.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..types import LossOutput, PairLogps
from .loss_spec import LN2, LossHParams, dpo_rewards, loss_output, register, softplus


@register(
    "nca_pair",
    citation="Chen et al. 2024, arXiv:2402.05369",
    formula="-log sigma(r_w) - 0.5 log sigma(-r_w) - 0.5 log sigma(-r_l)",
    at_reference=lambda hp: 2 * LN2,
    meaning="NCA: works on absolute rewards, raising the chosen reward instead of only widening the gap.",
)
def nca_pair_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """NCA (pairwise): Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards",
    arXiv:2402.05369 (the NCA loss for K=2 responses).

    loss = -log sigma(r_w) - 0.5 log sigma(-r_w) - 0.5 log sigma(-r_l), r = beta*log(pi/ref). Acts on ABSOLUTE
    rewards (pushes r_w up, not just the margin), so it resists the likelihood decrease of the chosen response.
    """
    lw, ll, cr, rr = dpo_rewards(policy, ref, hp)
    rw, rl = hp.beta * lw, hp.beta * ll
    # implicit rewards: the DPO ones, beta * log(pi/ref)
    return loss_output(-F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl), cr, rr)


@register(
    "bco_pair",
    citation="Jung et al. 2024, arXiv:2404.04656",
    formula="-log sigma(r_w - delta) - log sigma(delta - r_l)",
    at_reference=lambda hp: softplus(hp.bco_delta) + softplus(-hp.bco_delta),
    meaning="BCO: two binary classifiers on the rewards, the chosen one above delta (0, as TRL), the rejected below.",
)
def bco_pair_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """BCO (pairwise): Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
    arXiv:2404.04656 (BCE loss with reward shift delta).

    loss = -log sigma(r_w - delta) - log sigma(-(r_l - delta)), r = beta*log(pi/ref). The paper's delta is a running
    mean of the rewards; TRL 1.16 uses none, and so does `tilt train` (hp.bco_delta = 0: step 0 gives 2 ln 2).
    `tilt explain --bco-delta` shows the shifted form.
    """
    lw, ll, cr, rr = dpo_rewards(policy, ref, hp)
    d = hp.bco_delta
    # implicit rewards: beta * log(pi/ref), each classified against the shift delta
    return loss_output(-F.logsigmoid(hp.beta * lw - d) - F.logsigmoid(-(hp.beta * ll - d)), cr, rr)


@register(
    "apo_zero",
    citation="D'Oosterlinck et al. 2024, arXiv:2408.06266, Eq. 7",
    formula="(1 - sigma(r_w)) + sigma(r_l)",
    at_reference=lambda hp: 1.0,
    meaning="APO-zero: anchored; chosen likelihood up and rejected down, each relative to the reference.",
)
def apo_zero_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """APO-zero: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions",
    arXiv:2408.06266, Eq. 7. For chosen outputs better than the model's own:
    loss = (1 - sigma(beta*lw)) + sigma(beta*ll)  (raise chosen likelihood, lower rejected). Step 0: 1.
    """
    lw, ll, cr, rr = dpo_rewards(policy, ref, hp)
    # implicit rewards: beta * log(pi/ref), anchored at 0 (the reference) separately per response
    return loss_output((1.0 - torch.sigmoid(hp.beta * lw)) + torch.sigmoid(hp.beta * ll), cr, rr)


@register(
    "apo_down",
    citation="D'Oosterlinck et al. 2024, arXiv:2408.06266, Eq. 8",
    formula="sigma(r_w) + (1 - sigma(m))",
    at_reference=lambda hp: 1.0,
    meaning="APO-down: anchored; both likelihoods down, the rejected more (chosen worse than the model's own).",
)
def apo_down_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """APO-down: D'Oosterlinck et al. 2024, arXiv:2408.06266, Eq. 8. For chosen outputs worse than the model's:
    loss = sigma(beta*lw) + (1 - sigma(beta*(lw - ll)))  (lower both, the rejected more). Step 0: 1.
    """
    lw, ll, cr, rr = dpo_rewards(policy, ref, hp)
    # implicit rewards: the DPO ones, beta * log(pi/ref)
    return loss_output(torch.sigmoid(hp.beta * lw) + (1.0 - torch.sigmoid(hp.beta * (lw - ll))), cr, rr)


@register(
    "sppo_hard",
    citation="Wu et al. 2024, arXiv:2405.00675, Eq. 4.7",
    formula="(logratio_w - 1/(2 beta))^2 + (logratio_l + 1/(2 beta))^2",
    at_reference=lambda hp: 2 * (0.5 / hp.beta) ** 2,
    meaning="SPPO (hard): regresses the chosen log-ratio to +1/(2 beta) and the rejected to -1/(2 beta).",
)
def sppo_hard_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """SPPO (hard labels): Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment",
    arXiv:2405.00675, Eq. 4.7 of Algorithm 1 with P(y_w > y_l) = 1 for the winner and 0 for the loser:
    loss = (lw - 1/(2 beta))^2 + (ll + 1/(2 beta))^2. Step 0: 2/(2 beta)^2 = 50 at beta = 0.1.
    """
    lw, ll, cr, rr = dpo_rewards(policy, ref, hp)
    t = 0.5 / hp.beta
    # implicit rewards: beta * log(pi/ref), regressed to +1/2 (winner) and -1/2 (loser)
    return loss_output((lw - t) ** 2 + (ll + t) ** 2, cr, rr)
