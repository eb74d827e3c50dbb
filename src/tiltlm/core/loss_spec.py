"""What a preference loss is in tiltlm: its hyper-parameters, its facts (`LossSpec`), the registry every loss family
registers into, and the few pieces of arithmetic the families share (log-ratios, TRL's f-divergence scores).

The loss functions themselves live in the family modules (losses_margin.py, losses_anchored.py, losses_free.py);
core/losses.py imports them all and is the one place callers import from.

Notation used in the docstrings (all per pair):
    lw = log pi(y_w|x) - log ref(y_w|x)      chosen log-ratio  ("logratio_w")
    ll = log pi(y_l|x) - log ref(y_l|x)      rejected log-ratio
    h  = lw - ll                             the DPO "logits" (difference of log-ratios)
    sw, sl                                   the f-divergence scores of lw, ll (= lw, ll under reverse KL)
    nw, nl                                   completion token counts of y_w, y_l
Semantics follow TRL 1.16's DPOTrainer (``loss_type`` names and formulas) unless a docstring says otherwise.
All arithmetic is done in (at least) float32; log(sigmoid(x)) is always F.logsigmoid(x).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ..types import LossOutput, PairLogps

LN2 = math.log(2.0)

# TRL's f_divergence_type values (f-DPO: Wang et al. 2023, "Beyond Reverse KL", arXiv:2309.16240)
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@dataclass(frozen=True)
class LossHParams:
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5  # SimPO target reward margin gamma (in reward units, as TRL's simpo_gamma)
    discopop_tau: float = 0.05
    # the BCO paper's reward shift delta for bco_pair; TRL 1.16 (and so `tilt train`) uses none: 0
    bco_delta: float = 0.0
    f_divergence_type: str = "reverse_kl"  # f-DPO: which f-divergence regularises the policy (F_DIVERGENCES)
    f_alpha_divergence_coef: float = 0.5  # the alpha of alpha_divergence
    use_weighting: bool = False  # WPO: each pair's loss times the policy's length-normalised pair probability
    ld_alpha: Optional[float] = None  # LD-DPO: the weight of the longer completion's tokens past the shorter's length

    @classmethod
    def from_options(cls, options: Any, **overrides: Any) -> "LossHParams":
        """The one place loss hyper-parameters are built: every field read by name from `options` (a TrainConfig,
        an argparse Namespace, the dict of a run's config.yaml, ...), so a field added here reaches the training
        loop, the doctor, `tilt doctor`, `tilt explain` and `tilt landscape` alike. A missing or None value keeps
        the default; `overrides` win. A float field's value is converted with float() (YAML may give an int)."""
        def get(name: str) -> Any:
            return options.get(name) if isinstance(options, Mapping) else getattr(options, name, None)

        values = {f.name: get(f.name) for f in fields(cls)}
        values.update(overrides)
        floats = {f.name for f in fields(cls) if isinstance(f.default, float)}
        return cls(**{k: float(v) if k in floats else v for k, v in values.items() if v is not None})


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
    # built on the chosen-minus-rejected score difference, so TRL's f_divergence_type applies (the log Z(x) term of
    # the f-DPO reparameterisation cancels only in that difference)
    f_divergence: bool = False
    # compares pairs with each other (aot sorts the batch's log-ratios), so its per-pair losses are not per pair:
    # WPO's per-pair weights do not apply, and the value depends on which pairs share a micro-batch
    across_pairs: bool = False

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


# ------------------------------------------------------------------------------------------------ shared arithmetic
def as_float(x: torch.Tensor) -> torch.Tensor:
    """Upcast to at least float32 (float64 stays float64, for gradcheck)."""
    x = torch.as_tensor(x)
    return x.to(torch.promote_types(x.dtype, torch.float32))


def token_counts(n: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Completion token counts as `like`'s dtype, at least 1 (TRL's clamp(min=1))."""
    return torch.as_tensor(n, device=like.device).to(like.dtype).clamp(min=1.0)


def logratios(policy: PairLogps, ref: Optional[PairLogps]) -> tuple[torch.Tensor, torch.Tensor]:
    """(lw, ll): log pi - log ref of the chosen and of the rejected response."""
    if ref is None:
        free = sorted(n for n, spec in LOSSES.items() if spec.reference_free)
        raise ValueError(f"this loss needs reference log-probs (ref=None is only allowed for {free})")
    return as_float(policy.chosen) - as_float(ref.chosen), as_float(policy.rejected) - as_float(ref.rejected)


def dpo_rewards(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams):
    """(lw, ll, r_w, r_l): the log-ratios and the DPO implicit rewards r = beta * log(pi/ref) (Rafailov et al.
    2023, Sec. 5), detached. These are the rewards TRL reports for every reference-based loss."""
    lw, ll = logratios(policy, ref)
    return lw, ll, (hp.beta * lw).detach(), (hp.beta * ll).detach()


def f_score(logratio: torch.Tensor, hp: LossHParams) -> torch.Tensor:
    """f'(pi/ref) of the f-divergence regulariser (f-DPO: Wang et al. 2023, arXiv:2309.16240), as TRL 1.16:
    the DPO margin beta*(lw - ll) becomes beta*(f'(t_w) - f'(t_l)), t = pi/ref = exp(logratio).

    reverse_kl  f'(t) = log t + 1              -> logratio (the constant cancels in the difference): plain DPO
    forward_kl  f'(t) = 1 - 1/t                -> 1 - exp(-logratio)
    js          f'(t) = log(2t / (1 + t))      -> ln 2 + log sigma(logratio)
    alpha       f'(t) = (t^(alpha-1) - 1)/(alpha-1) -> (exp((alpha-1) logratio) - 1) / (alpha-1), logratio at alpha=1
    As TRL, the exponent of alpha_divergence is clamped at 80 so exp stays finite in float32 (TRL: 11 in fp16).
    """
    kind = hp.f_divergence_type
    if kind == "reverse_kl":
        return logratio
    if kind == "forward_kl":
        return 1.0 - torch.exp(-logratio)
    if kind == "js_divergence":
        return LN2 + F.logsigmoid(logratio)
    if kind == "alpha_divergence":
        a = hp.f_alpha_divergence_coef
        if abs(a - 1.0) < 1e-6:  # the limit alpha -> 1 is log t: reverse KL (TRL's tolerance)
            return logratio
        return torch.expm1(torch.clamp((a - 1.0) * logratio, max=80.0)) / (a - 1.0)
    raise ValueError(f"unknown f_divergence_type {kind!r}; known: {', '.join(F_DIVERGENCES)}")


def f_scores(policy: PairLogps, ref: Optional[PairLogps], hp: LossHParams):
    """(sw, sl, r_w, r_l): the f-divergence scores of the two log-ratios (= lw, ll under reverse KL) and the DPO
    rewards beta * log(pi/ref), which TRL reports whatever the divergence."""
    lw, ll, cr, rr = dpo_rewards(policy, ref, hp)
    return f_score(lw, hp), f_score(ll, hp), cr, rr


def smoothed_logistic(x: torch.Tensor, eps: float) -> torch.Tensor:
    """-(1-eps) log sigma(x) - eps log sigma(-x): logistic loss with label smoothing eps (cDPO)."""
    out = -F.logsigmoid(x)
    if eps:
        out = (1.0 - eps) * out - eps * F.logsigmoid(-x)
    return out


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def loss_output(losses, chosen_rewards, rejected_rewards) -> LossOutput:
    return LossOutput(losses=losses, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)


__all__ = ["LN2", "F_DIVERGENCES", "LossHParams", "LossFn", "LossSpec", "LOSSES", "register", "as_float",
           "token_counts", "logratios", "dpo_rewards", "f_score", "f_scores", "smoothed_logistic", "softplus",
           "loss_output"]
