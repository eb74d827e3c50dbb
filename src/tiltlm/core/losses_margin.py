"""Losses of the reward margin: functions of the chosen-minus-rejected difference of (f-divergence) log-ratio scores.

TRL's f_divergence_type applies to all of them but aot / aot_unpaired (which TRL builds on plain log-ratios):
under reverse KL (the default) sw - sl = h, the DPO logits. Notation: core/loss_spec.py.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..types import LossOutput, PairLogps
from .loss_spec import (LN2, LossHParams, as_float, dpo_rewards, f_scores, logratios, loss_output, register,
                        smoothed_logistic, token_counts)


@register(
    "sigmoid",
    citation="Rafailov et al. 2023, arXiv:2305.18290, Eq. 7 (cDPO: Mitchell 2023)",
    formula="-log sigma(m)",
    smoothed_formula="-(1-eps) log sigma(m) - eps log sigma(-m)",
    margin_only=True,
    preference_model=True,
    f_divergence=True,
    at_reference=lambda hp: LN2,
    meaning=("DPO: a logistic (Bradley-Terry) loss on the reward margin; its gradient weight sigma(-m) fades as "
             "the pair becomes confidently correct and saturates at 1 when it is confidently wrong."),
)
def sigmoid_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """DPO: Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290, Eq. 7.

    loss = -log sigma(beta*(sw - sl)) (= -log sigma(beta*h) under reverse KL). With label_smoothing eps > 0 this is
    conservative DPO (cDPO, Mitchell 2023, "A note on DPO with noisy preferences"):
    -(1-eps) log sigma(beta*h) - eps log sigma(-beta*h), minimised at beta*h* = logit(1-eps) instead of +inf.
    cDPO is tiltlm's (and TRL < 1.0's) meaning of label_smoothing here; TRL 1.16's sigmoid ignores label_smoothing.
    """
    sw, sl, cr, rr = f_scores(policy, ref, hp)
    # implicit rewards: r = beta * log(pi/ref) per response; the loss is a logistic loss on r_w - r_l
    return loss_output(smoothed_logistic(hp.beta * (sw - sl), hp.label_smoothing), cr, rr)


@register(
    "robust",
    citation="Chowdhury, Kini & Natarajan 2024, arXiv:2403.00409, Sec. 3",
    formula="((1-eps)(-log sigma(m)) + eps log sigma(-m)) / (1-2 eps)",
    margin_only=True,
    preference_model=True,
    f_divergence=True,
    at_reference=lambda hp: LN2,
    meaning="rDPO: DPO de-biased for labels flipped with probability eps (an unbiased estimate of the clean loss).",
)
def robust_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """Robust DPO (rDPO): Chowdhury, Kini & Natarajan 2024, "Provably Robust DPO", arXiv:2403.00409
    (the de-biased rDPO loss, Sec. 3).

    loss = [(1-eps) * (-log sigma(beta*h)) + eps * log sigma(-beta*h)] / (1 - 2 eps), an unbiased estimate of the
    clean DPO loss when each label is flipped with probability eps. Note the + sign on the flipped term
    (TRL: ``(clean - flipped) / (1 - 2 eps)`` with ``flipped = -eps * logsigmoid(-beta*h)``).
    """
    sw, sl, cr, rr = f_scores(policy, ref, hp)
    eps = hp.label_smoothing
    x = hp.beta * (sw - sl)
    losses = ((1.0 - eps) * -F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1.0 - 2.0 * eps)
    # implicit rewards: the DPO ones, beta * log(pi/ref)
    return loss_output(losses, cr, rr)


@register(
    "hinge",
    citation="Zhao et al. 2023, arXiv:2305.10425, Eq. 1",
    formula="relu(1 - m)",
    margin_only=True,
    f_divergence=True,
    at_reference=lambda hp: 1.0,
    meaning="SLiC hinge: a constant push until beta*h reaches 1, then exactly zero loss and zero gradient.",
)
def hinge_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """SLiC-HF: Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    arXiv:2305.10425, the rank-calibration hinge of Eq. 1 (here on reference-corrected log-ratios, as TRL).

    loss = relu(1 - beta*h): zero loss and zero gradient once the margin beta*h >= 1 (margin delta = 1/beta).
    """
    sw, sl, cr, rr = f_scores(policy, ref, hp)
    # implicit rewards: the DPO ones, beta * log(pi/ref)
    return loss_output(torch.relu(1.0 - hp.beta * (sw - sl)), cr, rr)


@register(
    "ipo",
    citation="Azar et al. 2023, arXiv:2310.12036, Eq. 17",
    formula="(logratio_w/n_w - logratio_l/n_l - 1/(2 beta))^2",
    f_divergence=True,
    at_reference=lambda hp: (0.5 / hp.beta) ** 2,
    meaning="IPO: regresses the per-token log-ratio gap onto 1/(2 beta); pairs that overshoot are pulled back.",
)
def ipo_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """IPO: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    arXiv:2310.12036, Eq. 17 (beta plays the role of the paper's tau).

    As TRL (confirmed there with the IPO authors) the log-ratios are LENGTH-NORMALISED:
    h_n = sw/nw - sl/nl,  loss = (h_n - 1/(2 beta))^2. Minimum (0, zero gradient) at h_n = 1/(2 beta);
    at step 0 (policy == ref) the loss is 1/(2 beta)^2 = 25 for beta = 0.1.
    """
    sw, sl, cr, rr = f_scores(policy, ref, hp)
    h_n = sw / token_counts(policy.chosen_tokens, sw) - sl / token_counts(policy.rejected_tokens, sl)
    # implicit rewards reported as TRL does: beta * (summed) log(pi/ref)
    return loss_output((h_n - 1.0 / (2.0 * hp.beta)) ** 2, cr, rr)


@register(
    "sigmoid_norm",
    citation="Rafailov et al. 2023 Eq. 7 on per-token means (Tulu 3, arXiv:2411.15124)",
    formula="-log sigma(m)  (m on per-token means)",
    reward="logratio per token",
    preference_model=True,
    f_divergence=True,
    at_reference=lambda hp: LN2,
    meaning="length-normalised DPO: the DPO loss on per-token-mean log-ratios, so length buys no margin.",
)
def sigmoid_norm_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """Length-normalised DPO: DPO Eq. 7 (Rafailov et al. 2023, arXiv:2305.18290) applied to per-token-mean
    log-ratios, as in Tulu 3's length-normalised DPO (Lambert et al. 2024, arXiv:2411.15124).

    loss = -log sigma(beta * (sw/nw - sl/nl)) (cDPO label smoothing applies as for `sigmoid`; TRL 1.16 has none).
    The rewards reported are the per-token means the loss compares (TRL reports the summed beta * log(pi/ref)).
    """
    sw, sl, _, _ = f_scores(policy, ref, hp)
    lw, ll = logratios(policy, ref)
    nw, nl = token_counts(policy.chosen_tokens, lw), token_counts(policy.rejected_tokens, ll)
    # implicit rewards: beta * per-token-mean log(pi/ref), the quantities the loss compares
    return loss_output(smoothed_logistic(hp.beta * (sw / nw - sl / nl), hp.label_smoothing),
                       (hp.beta * lw / nw).detach(), (hp.beta * ll / nl).detach())


def exo_eps(hp: LossHParams) -> float:
    """EXO's label smoothing: label_smoothing, or 1e-3 when it is 0 (log 0 is undefined; TRL 1.16 refuses 0, and the
    EXO paper recommends 1e-3)."""
    return hp.label_smoothing if hp.label_smoothing > 0 else 1e-3


@register(
    "exo_pair",
    citation="Ji et al. 2024, arXiv:2402.00856, Eq. 16",
    formula="sigma(m)(log sigma(m) - log(1-eps)) + sigma(-m)(log sigma(-m) - log eps)",
    margin_only=True,
    f_divergence=True,
    at_reference=lambda hp: -LN2 - (math.log1p(-exo_eps(hp)) + math.log(exo_eps(hp))) / 2,
    meaning="EXO: reverse KL from the policy's pair distribution to the smoothed label; zero at sigma(m) = 1-eps.",
)
def exo_pair_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """EXO (pairwise): Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment",
    arXiv:2402.00856, Eq. 16.

    Reverse KL between the policy's pair distribution q = softmax(beta*[lw, ll]) = [sigma(x), sigma(-x)],
    x = beta*h, and the smoothed label p = [1-eps, eps]:
        loss = sigma(x) (log sigma(x) - log(1-eps)) + sigma(-x) (log sigma(-x) - log eps).
    eps = label_smoothing, or 1e-3 when it is 0 (see exo_eps). Minimum 0 at sigma(x) = 1-eps.
    At x = 0: -ln2 - (ln(1-eps) + ln eps)/2.
    """
    sw, sl, cr, rr = f_scores(policy, ref, hp)
    eps = exo_eps(hp)
    x = hp.beta * (sw - sl)
    losses = torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-eps)) + torch.sigmoid(-x) * (
        F.logsigmoid(-x) - math.log(eps))
    # implicit rewards: the DPO ones, beta * log(pi/ref)
    return loss_output(losses, cr, rr)


@register(
    "discopop",
    citation="Chris Lu et al. 2024, arXiv:2406.08414, Eq. 5",
    formula="(1 - sigma(m/tau)) (-log sigma(m)) + sigma(m/tau) exp(-m)",
    margin_only=True,
    f_divergence=True,
    at_reference=lambda hp: 0.5 * LN2 + 0.5,
    meaning="DiscoPOP: the logistic loss blended into exp(-m) as the margin grows (weight sigma(m/tau)).",
)
def discopop_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """DiscoPOP / LRML: Chris Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for
    Large Language Models", arXiv:2406.08414, Eq. 5 (log-ratio modulated loss).

    x = beta*h, w = sigma(x / tau): loss = (1 - w) * (-log sigma(x)) + w * exp(-x), tau = hp.discopop_tau.
    Step 0: (ln 2 + 1) / 2.
    """
    sw, sl, cr, rr = f_scores(policy, ref, hp)
    x = hp.beta * (sw - sl)
    w = torch.sigmoid(x / hp.discopop_tau)
    # implicit rewards: the DPO ones, beta * log(pi/ref)
    return loss_output((1.0 - w) * -F.logsigmoid(x) + w * torch.exp(-x), cr, rr)


@register(
    "aot",
    citation="Melnyk et al. 2024, arXiv:2406.05882 (AOT, paired)",
    formula="-log sigma(beta * (sort(pi_w - pi_l) - sort(ref_w - ref_l)))  (sorted over the batch)",
    smoothed_formula="-(1-eps) log sigma(x) - eps log sigma(-x), x the sorted difference",
    across_pairs=True,
    at_reference=lambda hp: LN2,
    meaning=("AOT: distributional alignment; the batch's sorted policy log-odds must dominate the sorted reference "
             "ones quantile by quantile (first-order stochastic dominance), not pair by pair."),
)
def aot_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """AOT (paired): Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport",
    arXiv:2406.05882, the paired AOT objective: the one-dimensional optimal transport between the batch's
    distributions of u = logpi_w - logpi_l and of v = logref_w - logref_l is the sorted matching, so
        loss_k = -(1-eps) log sigma(beta * (u_(k) - v_(k))) - eps log sigma(-beta * (u_(k) - v_(k)))
    with u_(k), v_(k) the k-th smallest of the batch (TRL: label_smoothing eps applies). The k-th loss belongs to a
    quantile, not to the k-th pair. Rewards are the pairs' own DPO rewards. Step 0: ln 2.
    """
    lw, ll, cr, rr = dpo_rewards(policy, ref, hp)
    u_sorted, _ = torch.sort(as_float(policy.chosen) - as_float(policy.rejected), dim=0)
    v_sorted, _ = torch.sort(as_float(ref.chosen) - as_float(ref.rejected), dim=0)
    return loss_output(smoothed_logistic(hp.beta * (u_sorted - v_sorted), hp.label_smoothing), cr, rr)


@register(
    "aot_unpaired",
    citation="Melnyk et al. 2024, arXiv:2406.05882 (AOT, unpaired)",
    formula="-log sigma(beta * (sort(logratio_w) - sort(logratio_l)))  (sorted over the batch)",
    smoothed_formula="-(1-eps) log sigma(x) - eps log sigma(-x), x the sorted difference",
    across_pairs=True,
    at_reference=lambda hp: LN2,
    meaning=("AOT (unpaired): the batch's sorted chosen log-ratios must dominate its sorted rejected log-ratios, "
             "quantile by quantile; chosen and rejected need not come from the same prompt."),
)
def aot_unpaired_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """AOT (unpaired): Melnyk et al. 2024, arXiv:2406.05882, the unpaired objective: the sorted matching of
    the batch's chosen log-ratios lw and rejected log-ratios ll,
        loss_k = -(1-eps) log sigma(beta * (lw_(k) - ll_(k))) - eps log sigma(-beta * (lw_(k) - ll_(k))).
    The k-th loss belongs to a quantile, not to the k-th pair. Rewards are the pairs' own DPO rewards. Step 0: ln 2.
    """
    lw, ll, cr, rr = dpo_rewards(policy, ref, hp)
    lw_sorted, _ = torch.sort(lw, dim=0)
    ll_sorted, _ = torch.sort(ll, dim=0)
    return loss_output(smoothed_logistic(hp.beta * (lw_sorted - ll_sorted), hp.label_smoothing), cr, rr)
