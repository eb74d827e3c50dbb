"""Preference losses as PURE functions: sequence log-probs in, per-pair losses and implicit rewards out.

Every loss has the signature ``fn(policy, ref, hp) -> LossOutput`` where ``policy`` / ``ref`` are
:class:`~tiltlm.types.PairLogps` (``.chosen`` / ``.rejected`` are SUMS of completion-token log-probs, shape (B,),
``.chosen_tokens`` / ``.rejected_tokens`` the float token counts) and ``hp`` is a :class:`LossHParams`.
Nothing here touches a model: the functions can be unit-tested on four numbers (see tests/test_losses.py).

Notation used in the docstrings (all per pair):
    lw = log pi(y_w|x) - log ref(y_w|x)      chosen log-ratio  ("logratio_w")
    ll = log pi(y_l|x) - log ref(y_l|x)      rejected log-ratio
    h  = lw - ll                             the DPO "logits" (difference of log-ratios)
    nw, nl                                   completion token counts of y_w, y_l
Semantics follow TRL's DPOTrainer (``loss_type`` names and formulas) unless a docstring says otherwise.
All arithmetic is done in (at least) float32; log(sigmoid(x)) is always F.logsigmoid(x).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..types import LossOutput, PairLogps


@dataclass(frozen=True)
class LossHParams:
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5  # SimPO target reward margin gamma (in reward units, as TRL's simpo_gamma)
    discopop_tau: float = 0.05
    bco_delta: float = 0.0  # running mean of rewards for bco_pair (the caller tracks it: RewardMean)

    @classmethod
    def from_options(cls, options: Any, **overrides: Any) -> "LossHParams":
        """The one place loss hyper-parameters are built: every field read by name from `options` (a TrainConfig,
        an argparse Namespace, the dict of a run's config.yaml, ...), so a field added here reaches the training
        loop, the doctor, `tilt explain` and `tilt landscape` alike. A missing or None value keeps the default;
        `overrides` (e.g. the loop's running `bco_delta`) win."""
        def get(name: str) -> Any:
            return options.get(name) if isinstance(options, Mapping) else getattr(options, name, None)

        values = {f.name: get(f.name) for f in fields(cls)}
        values.update(overrides)
        return cls(**{k: float(v) for k, v in values.items() if v is not None})


LossFn = Callable[[PairLogps, Optional[PairLogps], LossHParams], LossOutput]


@dataclass(frozen=True)
class LossSpec:
    """Everything tiltlm knows about one loss, in one place (torchtune's habit: a loss carries its own facts).

    The doctor, `tilt explain`, `tilt landscape` and the config read these fields; nothing else lists losses.
    Calling a spec calls its function: ``LOSSES["sigmoid"](policy, ref, hp)``.
    """

    name: str
    fn: LossFn
    citation: str  # paper and equation the function implements
    formula: str  # the per-pair loss in the margin notation of `tilt explain` (m = r_w - r_l)
    meaning: str  # one sentence: what the loss does to the policy
    reference_free: bool = False  # ignores `ref` (it may be None): no reference model or cache is needed
    # the loss when policy == reference (every log-ratio 0) as a closed form of the hyper-parameters, hand-derived;
    # None for reference-free losses, whose value depends on the policy alone. The doctor's step-1 check reads it.
    at_reference: Optional[Callable[[LossHParams], float]] = None
    smoothed_formula: Optional[str] = None  # the formula when label_smoothing > 0, if it changes
    margin_only: bool = False  # a function of m = beta*h alone, so dL/dlogpi(y_w) = beta * dL/dm
    reward: str = "logratio"  # what the implicit reward is: beta * {logratio | logratio per token | logpi per token}
    preference_model: bool = False  # sigma(m) is the policy's own P(y_w > y_l) (a Bradley-Terry loss)

    def __call__(self, policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
        return self.fn(policy, ref, hp)


LOSSES: dict[str, LossSpec] = {}


def register(name: str, **facts) -> Callable[[LossFn], LossFn]:
    """Decorator: add a loss function and its facts (see LossSpec) to the LOSSES registry under `name`."""

    def deco(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        facts.setdefault("citation", "")
        facts.setdefault("formula", "L")
        facts.setdefault("meaning", name)
        LOSSES[name] = LossSpec(name=name, fn=fn, **facts)
        return fn

    return deco


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


LN2 = math.log(2.0)


# ------------------------------------------------------------------------------------------------ helpers
def _f(x: torch.Tensor) -> torch.Tensor:
    """Upcast to at least float32 (float64 stays float64, for gradcheck)."""
    x = torch.as_tensor(x)
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _tokens(n: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(n, device=like.device).to(like.dtype).clamp(min=1.0)


def _logratios(policy: PairLogps, ref: Optional[PairLogps]) -> tuple[torch.Tensor, torch.Tensor]:
    if ref is None:
        free = sorted(n for n, spec in LOSSES.items() if spec.reference_free)
        raise ValueError(f"this loss needs reference log-probs (ref=None is only allowed for {free})")
    return _f(policy.chosen) - _f(ref.chosen), _f(policy.rejected) - _f(ref.rejected)


def _dpo_rewards(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams):
    """The DPO implicit rewards r = beta * log(pi/ref) (Rafailov et al. 2023, Sec. 5), detached."""
    lw, ll = _logratios(policy, ref)
    return lw, ll, (hp.beta * lw).detach(), (hp.beta * ll).detach()


def _smoothed_logistic(x: torch.Tensor, eps: float) -> torch.Tensor:
    """-(1-eps) log sigma(x) - eps log sigma(-x): logistic loss with label smoothing eps (cDPO)."""
    out = -F.logsigmoid(x)
    if eps:
        out = (1.0 - eps) * out - eps * F.logsigmoid(-x)
    return out


def _exo_eps(hp: LossHParams) -> float:
    """EXO's label smoothing: label_smoothing, or 1e-3 when it is 0 (log 0 is undefined)."""
    return hp.label_smoothing if hp.label_smoothing > 0 else 1e-3


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _out(losses, cr, rr) -> LossOutput:
    return LossOutput(losses=losses, chosen_rewards=cr, rejected_rewards=rr)


# ------------------------------------------------------------------------------------------------ losses
@register(
    "sigmoid",
    citation="Rafailov et al. 2023, arXiv:2305.18290, Eq. 7 (cDPO: Mitchell 2023)",
    formula="-log sigma(m)",
    smoothed_formula="-(1-eps) log sigma(m) - eps log sigma(-m)",
    margin_only=True,
    preference_model=True,
    at_reference=lambda hp: LN2,
    meaning=("DPO: a logistic (Bradley-Terry) loss on the reward margin; its gradient weight sigma(-m) fades as "
             "the pair becomes confidently correct and saturates at 1 when it is confidently wrong."),
)
def sigmoid_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """DPO: Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290, Eq. 7.

    loss = -log sigma(beta*h). With label_smoothing eps > 0 this is conservative DPO (cDPO, Mitchell 2023,
    "A note on DPO with noisy preferences"): -(1-eps) log sigma(beta*h) - eps log sigma(-beta*h),
    minimised at beta*h* = logit(1-eps) instead of +inf.
    """
    lw, ll, cr, rr = _dpo_rewards(policy, ref, hp)
    # implicit rewards: r = beta * log(pi/ref) per response; the loss is a logistic loss on r_w - r_l
    return _out(_smoothed_logistic(hp.beta * (lw - ll), hp.label_smoothing), cr, rr)


@register(
    "robust",
    citation="Chowdhury, Kini & Natarajan 2024, arXiv:2403.00409, Sec. 3",
    formula="((1-eps)(-log sigma(m)) + eps log sigma(-m)) / (1-2 eps)",
    margin_only=True,
    preference_model=True,
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
    lw, ll, cr, rr = _dpo_rewards(policy, ref, hp)
    eps = hp.label_smoothing
    x = hp.beta * (lw - ll)
    losses = ((1.0 - eps) * -F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1.0 - 2.0 * eps)
    # implicit rewards: the DPO ones, beta * log(pi/ref)
    return _out(losses, cr, rr)


@register(
    "hinge",
    citation="Zhao et al. 2023, arXiv:2305.10425, Eq. 1",
    formula="relu(1 - m)",
    margin_only=True,
    at_reference=lambda hp: 1.0,
    meaning="SLiC hinge: a constant push until beta*h reaches 1, then exactly zero loss and zero gradient.",
)
def hinge_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """SLiC-HF: Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    arXiv:2305.10425, the rank-calibration hinge of Eq. 1 (here on reference-corrected log-ratios, as TRL).

    loss = relu(1 - beta*h): zero loss and zero gradient once the margin beta*h >= 1 (margin delta = 1/beta).
    """
    lw, ll, cr, rr = _dpo_rewards(policy, ref, hp)
    # implicit rewards: the DPO ones, beta * log(pi/ref)
    return _out(torch.relu(1.0 - hp.beta * (lw - ll)), cr, rr)


@register(
    "ipo",
    citation="Azar et al. 2023, arXiv:2310.12036, Eq. 17",
    formula="(logratio_w/n_w - logratio_l/n_l - 1/(2 beta))^2",
    at_reference=lambda hp: (0.5 / hp.beta) ** 2,
    meaning="IPO: regresses the per-token log-ratio gap onto 1/(2 beta); pairs that overshoot are pulled back.",
)
def ipo_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """IPO: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    arXiv:2310.12036, Eq. 17 (beta plays the role of the paper's tau).

    As TRL (confirmed there with the IPO authors) the log-ratios are LENGTH-NORMALISED:
    h_n = lw/nw - ll/nl,  loss = (h_n - 1/(2 beta))^2. Minimum (0, zero gradient) at h_n = 1/(2 beta);
    at step 0 (policy == ref) the loss is 1/(2 beta)^2 = 25 for beta = 0.1.
    """
    lw, ll, cr, rr = _dpo_rewards(policy, ref, hp)
    h_n = lw / _tokens(policy.chosen_tokens, lw) - ll / _tokens(policy.rejected_tokens, ll)
    # implicit rewards reported as TRL does: beta * (summed) log(pi/ref)
    return _out((h_n - 1.0 / (2.0 * hp.beta)) ** 2, cr, rr)


@register(
    "sigmoid_norm",
    citation="Rafailov et al. 2023 Eq. 7 on per-token means (Tulu 3, arXiv:2411.15124)",
    formula="-log sigma(m)  (m on per-token means)",
    reward="logratio per token",
    preference_model=True,
    at_reference=lambda hp: LN2,
    meaning="length-normalised DPO: the DPO loss on per-token-mean log-ratios, so length buys no margin.",
)
def sigmoid_norm_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """Length-normalised DPO: DPO Eq. 7 (Rafailov et al. 2023, arXiv:2305.18290) applied to per-token-mean
    log-ratios, as in Tulu 3's length-normalised DPO (Lambert et al. 2024, arXiv:2411.15124).

    loss = -log sigma(beta * (lw/nw - ll/nl)) (cDPO label smoothing applies as for `sigmoid`).
    """
    lw, ll = _logratios(policy, ref)
    lw_n = lw / _tokens(policy.chosen_tokens, lw)
    ll_n = ll / _tokens(policy.rejected_tokens, ll)
    # implicit rewards: beta * per-token-mean log(pi/ref), the quantities the loss compares
    return _out(_smoothed_logistic(hp.beta * (lw_n - ll_n), hp.label_smoothing),
                (hp.beta * lw_n).detach(), (hp.beta * ll_n).detach())


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
    pw = _f(policy.chosen) / _tokens(policy.chosen_tokens, _f(policy.chosen))
    pl = _f(policy.rejected) / _tokens(policy.rejected_tokens, _f(policy.rejected))
    z = hp.beta * (pw - pl) - hp.simpo_gamma
    # implicit rewards: beta * average per-token log-prob of each response (no reference)
    return _out(_smoothed_logistic(z, hp.label_smoothing), (hp.beta * pw).detach(), (hp.beta * pl).detach())


@register(
    "sft",
    citation="NLL; mixed with DPO it is RPO: Pang et al. 2024, arXiv:2404.19733, Eq. 1",
    formula="-log pi(y_w|x) / n_w",
    reference_free=True,
    reward="logpi per token",
    meaning="SFT: per-token negative log-likelihood of the chosen response (the RPO / NLL regulariser).",
)
def sft_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """SFT / NLL on the chosen response, per token: loss = -logpi_w / nw. Reference-free.

    Mixed with DPO it gives RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization",
    arXiv:2404.19733, Eq. 1): loss_type = [sigmoid, sft], loss_weights = [1, alpha].
    """
    pw = _f(policy.chosen) / _tokens(policy.chosen_tokens, _f(policy.chosen))
    pl = _f(policy.rejected) / _tokens(policy.rejected_tokens, _f(policy.rejected))
    # no preference reward; report beta * per-token-mean log-probs so the metrics stay defined
    return _out(-pw, (hp.beta * pw).detach(), (hp.beta * pl).detach())


@register(
    "exo_pair",
    citation="Ji et al. 2024, arXiv:2402.00856, Eq. 16",
    formula="sigma(m)(log sigma(m) - log(1-eps)) + sigma(-m)(log sigma(-m) - log eps)",
    margin_only=True,
    at_reference=lambda hp: -LN2 - (math.log1p(-_exo_eps(hp)) + math.log(_exo_eps(hp))) / 2,
    meaning="EXO: reverse KL from the policy's pair distribution to the smoothed label; zero at sigma(m) = 1-eps.",
)
def exo_pair_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """EXO (pairwise): Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment",
    arXiv:2402.00856, Eq. 16.

    Reverse KL between the policy's pair distribution q = softmax(beta*[lw, ll]) = [sigma(x), sigma(-x)],
    x = beta*h, and the smoothed label p = [1-eps, eps]:
        loss = sigma(x) (log sigma(x) - log(1-eps)) + sigma(-x) (log sigma(-x) - log eps).
    eps = label_smoothing, or 1e-3 when it is 0 (log 0 is undefined; the EXO paper's / older TRL's default).
    Minimum 0 at sigma(x) = 1-eps. At x = 0: -ln2 - (ln(1-eps) + ln eps)/2.
    """
    lw, ll, cr, rr = _dpo_rewards(policy, ref, hp)
    eps = _exo_eps(hp)
    x = hp.beta * (lw - ll)
    losses = torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-eps)) + torch.sigmoid(-x) * (
        F.logsigmoid(-x) - math.log(eps))
    # implicit rewards: the DPO ones, beta * log(pi/ref)
    return _out(losses, cr, rr)


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
    lw, ll, cr, rr = _dpo_rewards(policy, ref, hp)
    rw, rl = hp.beta * lw, hp.beta * ll
    # implicit rewards: the DPO ones, beta * log(pi/ref)
    return _out(-F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl), cr, rr)


@register(
    "bco_pair",
    citation="Jung et al. 2024, arXiv:2404.04656",
    formula="-log sigma(r_w - delta) - log sigma(delta - r_l)",
    at_reference=lambda hp: _softplus(hp.bco_delta) + _softplus(-hp.bco_delta),
    meaning="BCO: two binary classifiers, chosen reward above the running mean delta, rejected below it.",
)
def bco_pair_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """BCO (pairwise): Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
    arXiv:2404.04656 (BCE loss with reward shift delta).

    loss = -log sigma(r_w - delta) - log sigma(-(r_l - delta)), r = beta*log(pi/ref); delta = hp.bco_delta is the
    running mean of the rewards, tracked by the caller (0 at step 0, giving 2 ln 2).
    """
    lw, ll, cr, rr = _dpo_rewards(policy, ref, hp)
    d = hp.bco_delta
    # implicit rewards: beta * log(pi/ref), each classified against the shift delta
    return _out(-F.logsigmoid(hp.beta * lw - d) - F.logsigmoid(-(hp.beta * ll - d)), cr, rr)


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
    lw, ll, cr, rr = _dpo_rewards(policy, ref, hp)
    # implicit rewards: beta * log(pi/ref), anchored at 0 (the reference) separately per response
    return _out((1.0 - torch.sigmoid(hp.beta * lw)) + torch.sigmoid(hp.beta * ll), cr, rr)


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
    lw, ll, cr, rr = _dpo_rewards(policy, ref, hp)
    # implicit rewards: the DPO ones, beta * log(pi/ref)
    return _out(torch.sigmoid(hp.beta * lw) + (1.0 - torch.sigmoid(hp.beta * (lw - ll))), cr, rr)


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
    lw, ll, cr, rr = _dpo_rewards(policy, ref, hp)
    t = 0.5 / hp.beta
    # implicit rewards: beta * log(pi/ref), regressed to +1/2 (winner) and -1/2 (loser)
    return _out((lw - t) ** 2 + (ll + t) ** 2, cr, rr)


@register(
    "discopop",
    citation="Chris Lu et al. 2024, arXiv:2406.08414, Eq. 5",
    formula="(1 - sigma(m/tau)) (-log sigma(m)) + sigma(m/tau) exp(-m)",
    margin_only=True,
    at_reference=lambda hp: 0.5 * LN2 + 0.5,
    meaning="DiscoPOP: the logistic loss blended into exp(-m) as the margin grows (weight sigma(m/tau)).",
)
def discopop_loss(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """DiscoPOP / LRML: Chris Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for
    Large Language Models", arXiv:2406.08414, Eq. 5 (log-ratio modulated loss).

    x = beta*h, w = sigma(x / tau): loss = (1 - w) * (-log sigma(x)) + w * exp(-x), tau = hp.discopop_tau.
    Step 0: (ln 2 + 1) / 2.
    """
    lw, ll, cr, rr = _dpo_rewards(policy, ref, hp)
    x = hp.beta * (lw - ll)
    w = torch.sigmoid(x / hp.discopop_tau)
    # implicit rewards: the DPO ones, beta * log(pi/ref)
    return _out((1.0 - w) * -F.logsigmoid(x) + w * torch.exp(-x), cr, rr)


# ------------------------------------------------------------------------------------------------ mixing
def compute_loss(loss_types: list[str], weights: Optional[list[float]], policy: PairLogps,
                 ref: Optional[PairLogps], hp: LossHParams) -> LossOutput:
    """Weighted sum of registered losses, per pair.

    `losses` = sum_i weights[i] * LOSSES[loss_types[i]](...).losses (weights default to 1.0 each).
    Rewards come from the first preference loss in the list (not `sft`); if the list is only `sft`, they are
    beta * per-token-mean policy log-probs. With more than one loss each component's per-pair loss is in
    ``extras["loss/<name>"]``.
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

    total = None
    rewards_from: Optional[LossOutput] = None
    extras: dict[str, torch.Tensor] = {}
    for name, w in zip(loss_types, weights):
        out = LOSSES[name](policy, ref, hp)
        total = out.losses * float(w) if total is None else total + out.losses * float(w)
        if rewards_from is None and name != "sft":
            rewards_from = out
        if len(loss_types) > 1:
            extras[f"loss/{name}"] = out.losses
        for k, v in out.extras.items():
            extras.setdefault(k, v)
    if rewards_from is None:  # only sft
        rewards_from = LOSSES["sft"](policy, ref, hp)
    return LossOutput(losses=total, chosen_rewards=rewards_from.chosen_rewards,
                      rejected_rewards=rewards_from.rejected_rewards, extras=extras)


# a derived view of the registry (not a second table): the losses that need no reference
REFERENCE_FREE = frozenset(name for name, spec in LOSSES.items() if spec.reference_free)

__all__ = ["LossHParams", "LossFn", "LossSpec", "LOSSES", "REFERENCE_FREE", "register", "parse_loss_types",
           "needs_reference", "compute_loss"]
