"""Length bias, both ways: does the reward margin track the completion-length difference?

`len_diff_margin_corr` is the Pearson correlation, over a window of pairs, between the length difference
(chosen minus rejected completion tokens) and the reward margin. Positive: the LONGER reply wins (the policy grows
verbose); negative: the SHORTER reply wins (e.g. HH harmless, whose rejected replies are longer on average: the policy
learns "shorter is better"). Summed log-probs make length a lever either way: a long reply's log-ratio moves by
(per-token change) x (its length).

Pure statistics over metrics records and pair_scores.jsonl rows; the doctor (checks.py), `tilt explain` and the report
page read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..core.metrics import pearson, preference_accuracy
from .findings import as_number


def direction(corr: float) -> str:
    return "longer wins" if corr > 0 else "shorter wins"


def pooled_corr(rs: Sequence[float], ns: Sequence[Optional[float]]) -> tuple[float, Optional[float]]:
    """The mean of several windows' correlations and its z-score against "no correlation".

    With every window's pair count known: Fisher's z averaged with weights n - 3 (the inverse variance of atanh(r)),
    z-score = |mean z| * sqrt(sum(n - 3)). Otherwise the plain mean and no z-score."""
    if ns and all(n is not None and n > 3 for n in ns):
        w = [n - 3 for n in ns]
        zbar = sum(wi * math.atanh(max(-0.999999, min(0.999999, r))) for wi, r in zip(w, rs)) / sum(w)
        return math.tanh(zbar), abs(zbar) * math.sqrt(sum(w))
    return sum(rs) / len(rs), None


def z_score(r: float, n: Optional[float]) -> Optional[float]:
    return pooled_corr([r], [n])[1]


def length_fix(corr: float, mean_diff: Optional[float] = None, std_diff: Optional[float] = None,
               balanced_sd: float = 0.1) -> str:
    """The fix that fits the direction, with the data's own length difference when known (a mean difference under
    `balanced_sd` spreads: the data is balanced already, and only a length-normalised loss helps)."""
    longer = "chosen" if corr > 0 else "rejected"
    other = "rejected" if corr > 0 else "chosen"
    loss = ("use a length-normalised loss: --loss-type sigmoid_norm (each log-ratio divided by its token count, so a "
            "reply's length no longer scales its reward) or simpo (per-token log-probs, no reference)")
    known = mean_diff is not None and std_diff is not None
    if known and abs(mean_diff) < balanced_sd * std_diff:
        return (f"{loss}. The pairs are already length-balanced on average (chosen - rejected = {mean_diff:+.1f} ± "
                f"{std_diff:.1f} tokens): the length signal comes from the summed log-probs themselves (a long reply's "
                f"log-ratio moves by its per-token change times its length), so rebalancing the data will not remove "
                f"it; the normalised loss does")
    here = f"; here chosen - rejected = {mean_diff:+.1f} ± {std_diff:.1f} tokens" if known else ""
    return (f"{loss}; or length-balance the pairs: drop or down-weight the pairs whose {longer} reply is much longer "
            f"than the {other} one until the mean length difference is ~0{here}")


@dataclass
class PairLengthEffect:
    """Margin against length difference over scored pairs (pair_scores.jsonl), and what a fix would change."""

    pairs: int
    corr: float  # Pearson(len_diff, margin): what the run learned
    corr_per_token: Optional[float]  # the same log-ratios per token (sigmoid_norm's reward); None without reference
    accuracy: float  # all pairs (ties count 1/2)
    matched_pairs: int  # pairs whose lengths differ by at most `tolerance` tokens (a length-balanced subset)
    matched_accuracy: Optional[float]
    tolerance: float
    mean_chosen: float
    mean_rejected: float

    def what_it_would_change(self) -> str:
        parts = []
        if self.corr_per_token is not None:
            parts.append(f"read per token (the reward sigmoid_norm trains) the same log-ratios correlate "
                         f"{self.corr_per_token:+.2f} with the length difference instead of {self.corr:+.2f}")
        if self.matched_accuracy is not None:
            parts.append(f"on the {self.matched_pairs} pairs whose lengths are within {self.tolerance:.0f} tokens "
                         f"(a length-balanced subset) accuracy is {self.matched_accuracy:.2f}, against "
                         f"{self.accuracy:.2f} on all {self.pairs}")
        return "; ".join(parts)


def _num(row: dict, key: str) -> Optional[float]:
    """A finite number from a pair-scores row, else None."""
    x = as_number(row, key)
    return x if x is not None and math.isfinite(x) else None


def _acc(margins: Sequence[float]) -> float:
    return float(preference_accuracy(torch.tensor(margins, dtype=torch.float64)).mean())


def pair_length_effect(rows: Sequence[dict], beta: float, tolerance_frac: float = 0.1,
                       min_tolerance: float = 3.0) -> Optional[PairLengthEffect]:
    """From pair_scores rows (margin, chosen_tokens, rejected_tokens, policy_*/ref_* log-probs); None when fewer than
    4 usable pairs or no spread. The length-balanced subset keeps pairs with |len diff| <= max(min_tolerance,
    tolerance_frac * mean completion length)."""
    use = [r for r in rows if None not in (_num(r, "margin"), _num(r, "chosen_tokens"), _num(r, "rejected_tokens"))]
    if len(use) < 4:
        return None
    nc = [_num(r, "chosen_tokens") for r in use]
    nr = [_num(r, "rejected_tokens") for r in use]
    diff = [a - b for a, b in zip(nc, nr)]
    margins = [_num(r, "margin") for r in use]
    corr = pearson(diff, margins)
    if corr is None:
        return None
    per_token = None
    keys = ("policy_chosen", "ref_chosen", "policy_rejected", "ref_rejected")
    if all(_num(r, k) is not None for r in use for k in keys):
        pt = [beta * ((_num(r, "policy_chosen") - _num(r, "ref_chosen")) / max(a, 1.0)
                      - (_num(r, "policy_rejected") - _num(r, "ref_rejected")) / max(b, 1.0))
              for r, a, b in zip(use, nc, nr)]
        per_token = pearson(diff, pt)
    mean_c, mean_r = sum(nc) / len(nc), sum(nr) / len(nr)
    tol = max(min_tolerance, tolerance_frac * (mean_c + mean_r) / 2)
    matched = [m for m, d in zip(margins, diff) if abs(d) <= tol]
    return PairLengthEffect(pairs=len(use), corr=corr, corr_per_token=per_token, accuracy=_acc(margins),
                            matched_pairs=len(matched), matched_accuracy=_acc(matched) if len(matched) >= 4 else None,
                            tolerance=tol, mean_chosen=mean_c, mean_rejected=mean_r)


def length_bins(rows: Sequence[dict], bins: int = 5) -> list[dict]:
    """Pairs sorted by length difference into `bins` equal-count groups: each group's range, count, mean margin and
    accuracy (the table `tilt explain RUN_DIR` prints under the walkthrough)."""
    use = sorted(((_num(r, "chosen_tokens") - _num(r, "rejected_tokens"), _num(r, "margin")) for r in rows
                  if None not in (_num(r, "margin"), _num(r, "chosen_tokens"), _num(r, "rejected_tokens"))),
                 key=lambda t: t[0])
    if not use:
        return []
    bins = max(1, min(bins, len(use)))
    out = []
    for i in range(bins):
        part = use[i * len(use) // bins:(i + 1) * len(use) // bins]
        if part:
            ms = [m for _, m in part]
            out.append({"from": part[0][0], "to": part[-1][0], "pairs": len(part), "mean_margin": sum(ms) / len(ms),
                        "accuracy": _acc(ms)})
    return out
