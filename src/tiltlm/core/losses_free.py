"""Reference-free losses: functions of the policy's log-probs alone (`ref` is ignored and may be None)."""

from __future__ import annotations

from typing import Optional

import torch

from ..types import LossOutput, PairLogps
from .loss_spec import LossHParams, as_float, loss_output, register, smoothed_logistic, token_counts


@register(
    "simpo",
    citation="Meng, Xia & Chen 2024, arXiv:2405.14734, Eq. 6",
    formula="-log sigma(m - gamma)",
    reference_free=True,
    reward="logpi per token",
    preference_model=True,
    meaning="SimPO: reference-free; the gap of average log-probs (times beta) must exceed the target margin gamma.",
)
def simpo_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """SimPO: Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    arXiv:2405.14734, Eq. 6. Reference-free (`ref` is ignored and may be None).

    loss = -log sigma(beta*logpi_w/nw - beta*logpi_l/nl - gamma), gamma = hp.simpo_gamma (reward units), with
    label smoothing eps as TRL's CPO/SimPO: -(1-eps) log sigma(z) - eps log sigma(-z).
    """
    pw = as_float(policy.chosen) / token_counts(policy.chosen_tokens, as_float(policy.chosen))
    pl = as_float(policy.rejected) / token_counts(policy.rejected_tokens, as_float(policy.rejected))
    z = hp.beta * (pw - pl) - hp.simpo_gamma
    # implicit rewards: beta * average per-token log-prob of each response (no reference)
    return loss_output(smoothed_logistic(z, hp.label_smoothing), (hp.beta * pw).detach(), (hp.beta * pl).detach())


@register(
    "sft",
    citation="NLL; mixed with DPO it is RPO: Pang et al. 2024, arXiv:2404.19733, Eq. 1",
    formula="-sum(log pi(y_w|x)) / sum(n_w)  (over the batch's chosen tokens)",
    reference_free=True,
    reward="logpi per token",
    meaning="SFT: the negative log-likelihood per chosen token of the batch (the RPO / NLL regulariser).",
)
def sft_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """SFT / NLL on the chosen responses, as TRL 1.16: the mean over ALL chosen tokens of the batch,
    loss = -sum_pairs logpi_w / sum_pairs nw, the same value for every pair of the batch (so a long chosen response
    weighs more than a short one, and the value depends on which pairs share a micro-batch). Reference-free.

    Mixed with DPO it gives RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization",
    arXiv:2404.19733, Eq. 1): loss_type = [sigmoid, sft], loss_weights = [1, alpha].
    """
    lp_w, lp_l = as_float(policy.chosen), as_float(policy.rejected)
    nw, nl = token_counts(policy.chosen_tokens, lp_w), token_counts(policy.rejected_tokens, lp_l)
    per_token = lp_w.sum() / torch.as_tensor(policy.chosen_tokens, device=lp_w.device).to(lp_w.dtype).sum().clamp(min=1.0)
    # no preference reward; report beta * per-token-mean log-probs so the metrics stay defined
    return loss_output((-per_token).expand(lp_w.shape), (hp.beta * lp_w / nw).detach(), (hp.beta * lp_l / nl).detach())
