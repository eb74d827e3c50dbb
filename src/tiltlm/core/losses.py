"""Preference losses as PURE functions: sequence log-probs in, per-pair losses and implicit rewards out.

Every loss has the signature ``fn(policy, ref, hp) -> LossOutput`` where ``policy`` / ``ref`` are
:class:`~tiltlm.types.PairLogps` (``.chosen`` / ``.rejected`` are SUMS of completion-token log-probs, shape (B,),
``.chosen_tokens`` / ``.rejected_tokens`` the float token counts) and ``hp`` is a :class:`LossHParams`.
Nothing here touches a model: the functions can be unit-tested on four numbers (see tests/test_losses.py).

This module is where callers import from. The registry and the losses' facts are in loss_spec.py, the losses in
their families: losses_margin.py (functions of the chosen-minus-rejected margin: sigmoid, robust, hinge, ipo,
sigmoid_norm, exo_pair, discopop, aot, aot_unpaired), losses_anchored.py (each response's own reward: nca_pair,
bco_pair, apo_zero, apo_down, sppo_hard), losses_free.py (no reference: simpo, sft). Here: choosing and mixing them
(`compute_loss`), with TRL 1.16's three modifiers of every loss: f_divergence_type (in the scores, loss_spec.py),
LD-DPO's ld_alpha and WPO's use_weighting.
"""

from __future__ import annotations

import difflib
from typing import Optional, Sequence, Union

import torch

from ..types import LossOutput, PairLogps
# each family registers its losses on import; this order is the registry's (sigmoid first, as in help texts)
from . import losses_margin, losses_anchored, losses_free  # noqa: F401,I001
from .loss_spec import F_DIVERGENCES, LOSSES, LossFn, LossHParams, LossSpec, as_float, register, token_counts


def parse_loss_types(value: Union[str, Sequence[str]]) -> list[str]:
    """"sigmoid,sft" or ["sigmoid", "sft"] -> ["sigmoid", "sft"], every name checked against the registry."""
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s).strip() for s in value]
    names = [n for n in names if n]
    if not names:
        raise ValueError("loss_type is empty")
    for name in names:
        if name not in LOSSES:
            close = difflib.get_close_matches(name, list(LOSSES), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown loss_type {name!r}{hint}; known: {', '.join(LOSSES)}")
    return names


def needs_reference(loss_types: Sequence[str]) -> bool:
    """Whether any of the losses compares the policy with a reference (so reference log-probs are needed)."""
    return any(not LOSSES[name].reference_free for name in loss_types)


def check_modifiers(loss_types: Sequence[str], hp: LossHParams) -> None:
    """TRL 1.16's rules for the modifiers (ValueError, one line): a non-default f_divergence_type only with losses
    built on the score difference (or that ignore the reference), WPO never with a loss that compares pairs with
    each other, ld_alpha in [0, 1]."""
    if hp.f_divergence_type not in F_DIVERGENCES:
        raise ValueError(f"unknown f_divergence_type {hp.f_divergence_type!r}; known: {', '.join(F_DIVERGENCES)}")
    if hp.f_divergence_type != "reverse_kl":
        bad = [n for n in loss_types if not (LOSSES[n].f_divergence or LOSSES[n].reference_free)]
        if bad:
            ok = sorted(n for n, s in LOSSES.items() if s.f_divergence or s.reference_free)
            raise ValueError(f"f_divergence_type={hp.f_divergence_type!r} does not apply to {', '.join(bad)} (their "
                             f"f-DPO form has an uncancelled log Z(x) term); it works with {', '.join(ok)}")
    if hp.use_weighting:
        bad = [n for n in loss_types if LOSSES[n].across_pairs]
        if bad:
            raise ValueError(f"use_weighting (WPO) does not apply to {', '.join(bad)}: it sorts the batch, so its "
                             "per-pair losses do not belong to pairs")
    if hp.ld_alpha is not None and not 0.0 <= hp.ld_alpha <= 1.0:
        raise ValueError(f"ld_alpha must be in [0, 1], got {hp.ld_alpha}")


def length_desensitised(p: PairLogps, alpha: float) -> PairLogps:
    """LD-DPO: Liu et al. 2024, "Length Desensitization in Direct Preference Optimization", arXiv:2409.06411
    (TRL's ld_alpha): each sequence's log-prob is its first min(n_w, n_l) tokens' log-probs plus alpha times
    the rest, log pi = shared + alpha * tail; alpha = 1 is DPO, alpha = 0 drops the longer completion's excess."""
    if p.chosen_tail is None or p.rejected_tail is None:
        raise ValueError("ld_alpha needs the log-probs past each pair's shared length (PairLogps.*_tail, filled by "
                         "core/logps.sequence_logps)")
    ld = lambda total, tail: (as_float(total) - as_float(tail)) + alpha * as_float(tail)  # noqa: E731
    return PairLogps(ld(p.chosen, p.chosen_tail), ld(p.rejected, p.rejected_tail), p.chosen_tokens,
                     p.rejected_tokens, p.chosen_tail, p.rejected_tail, p.chosen_log_sum_sq, p.rejected_log_sum_sq)


def wpo_weights(policy: PairLogps) -> torch.Tensor:
    """WPO: Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization", arXiv:2406.11827, Eq. 2
    with TRL's sampled alignment: per pair w = w(y_w) * w(y_l), w(y) = exp(mean over y's tokens of
    log pi(y_t) - log sum_v pi(v)^2), detached (a weight, not a path for gradients)."""
    if policy.chosen_log_sum_sq is None or policy.rejected_log_sum_sq is None:
        raise ValueError("use_weighting needs the policy's per-token log sum_v p_v^2 (PairLogps.*_log_sum_sq: "
                         "core/logps.token_log_sum_sq_probs passed to sequence_logps)")
    lw, ll = as_float(policy.chosen).detach(), as_float(policy.rejected).detach()
    mean_w = (lw - as_float(policy.chosen_log_sum_sq)) / token_counts(policy.chosen_tokens, lw)
    mean_l = (ll - as_float(policy.rejected_log_sum_sq)) / token_counts(policy.rejected_tokens, ll)
    return torch.exp(mean_w) * torch.exp(mean_l)


def compute_loss(loss_types: list[str], weights: Optional[list[float]], policy: PairLogps,
                 ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """Weighted sum of registered losses, per pair.

    `losses` = sum_i weights[i] * LOSSES[loss_types[i]](...).losses (weights default to 1.0 each), times WPO's
    per-pair weight under hp.use_weighting. Under hp.ld_alpha every loss but `sft` sees the length-desensitised
    log-probs of policy and reference (TRL's sft reads the plain per-token log-probs). Rewards come from the first
    preference loss in the list (not `sft`); if the list is only `sft`, they are beta * per-token-mean policy
    log-probs. With more than one loss each component's per-pair loss is in ``extras["loss/<name>"]``; under WPO
    the weights are in ``extras["wpo_weight"]``.
    """
    loss_types = parse_loss_types(loss_types)
    if weights is None:
        weights = [1.0] * len(loss_types)
    if len(weights) != len(loss_types):
        raise ValueError(f"{len(weights)} loss weights for {len(loss_types)} loss types")
    if ref is None:
        needs = [n for n in loss_types if not LOSSES[n].reference_free]
        if needs:
            raise ValueError(f"loss type(s) {needs} need reference log-probs but ref is None")
    check_modifiers(loss_types, hp)
    pref_policy, pref_ref = policy, ref
    if hp.ld_alpha is not None:
        pref_policy = length_desensitised(policy, hp.ld_alpha)
        pref_ref = None if ref is None else length_desensitised(ref, hp.ld_alpha)
    pair_weights = wpo_weights(policy) if hp.use_weighting else None

    total = None
    rewards_from: Optional[LossOutput] = None
    extras: dict[str, torch.Tensor] = {}
    for name, w in zip(loss_types, weights):
        out = LOSSES[name](policy, ref, hp) if name == "sft" else LOSSES[name](pref_policy, pref_ref, hp)
        losses = out.losses if pair_weights is None else out.losses * pair_weights
        total = losses * float(w) if total is None else total + losses * float(w)
        if rewards_from is None and name != "sft":
            rewards_from = out
        if len(loss_types) > 1:
            extras[f"loss/{name}"] = losses
        for k, v in out.extras.items():
            extras.setdefault(k, v)
    if pair_weights is not None:
        extras["wpo_weight"] = pair_weights
    if rewards_from is None:  # only sft
        rewards_from = LOSSES["sft"](policy, ref, hp)
    return LossOutput(losses=total, chosen_rewards=rewards_from.chosen_rewards,
                      rejected_rewards=rewards_from.rejected_rewards, extras=extras)


# a derived view of the registry (not a second table): the losses that need no reference
REFERENCE_FREE = frozenset(name for name, spec in LOSSES.items() if spec.reference_free)

__all__ = ["LossHParams", "LossFn", "LossSpec", "LOSSES", "REFERENCE_FREE", "F_DIVERGENCES", "register",
           "parse_loss_types", "needs_reference", "check_modifiers", "length_desensitised", "wpo_weights",
           "compute_loss"]
