"""The doctor's check on an iterative DPO round's pairs (`tilt iterate`), before the round trains on them.

`no_signal_round` fires when the round's pairs carry little preference signal: most candidate pairs were dropped as
ties (the scorer cannot tell the policy's samples apart: typical once the policy has collapsed onto one answer, or
with a coarse scorer), or the kept pairs' chosen and rejected texts are nearly the same (a DPO step on them moves
almost nothing but the few differing tokens), or too few pairs are left to train on.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checks import Finding

FIX = ("raise --temperature or --num-generations so the samples differ, use --pairing all or a lower "
       "--reward-margin, or a finer scorer (a reward model or a judge with more labels); if the policy has "
       "converged, stop iterating")


@dataclass(frozen=True)
class RoundThresholds:
    max_tied_frac: float = 0.5  # share of candidate pairs dropped as tied (or identical texts) above this
    max_similarity: float = 0.9  # mean difflib ratio of chosen vs rejected text above this
    min_pairs: int = 4  # fewer kept pairs than this


def check_round_pairs(round_index: int, stats: dict, th: RoundThresholds = RoundThresholds()) -> list[Finding]:
    """Findings for one round's pair statistics (iterate/pairs.py `pair_statistics`); `step` is the round."""
    tied = stats.get("pairs/tied_frac", 0.0) + stats.get("pairs/identical_frac", 0.0)
    similarity = stats.get("pairs/similarity_mean", 0.0)
    count = stats.get("pairs/count", 0)
    reasons = []
    if tied > th.max_tied_frac:
        reasons.append(f"{tied:.0%} of the candidate pairs were tied or identical (> {th.max_tied_frac:.0%})")
    if count and similarity > th.max_similarity:
        reasons.append(f"chosen and rejected are {similarity:.0%} alike on average (> {th.max_similarity:.0%})")
    if count < th.min_pairs:
        reasons.append(f"only {count} pairs are left (< {th.min_pairs})")
    if not reasons:
        return []
    return [Finding("no_signal_round", "warning", round_index,
                    f"round {round_index}'s pairs carry little signal: " + "; ".join(reasons), FIX)]
