"""The per-round curves on held-out prompts: mean score of fresh samples, win rate against round 0's samples (the
initial policy's, same prompts, same seed), and KL(policy || initial) as the Monte-Carlo mean of
log pi(y|x) - log pi_init(y|x) over y ~ pi (sequence level, nats)."""

from __future__ import annotations

import math
import statistics
from typing import Callable, Optional, Sequence

from .sampling import generate, sequence_logps


def win_rate(scores: Sequence[float], baseline: Sequence[float]) -> float:
    """Share of samples scoring above the baseline's sample of the same (prompt, index); a tie counts 1/2."""
    if not scores:
        return float("nan")
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline)) / len(scores)


def evaluate_heldout(policy, initial, tokenizer, prompts: list, *, score: Callable, generation: dict, seed: int,
                     baseline: Optional[Sequence[float]] = None) -> dict:
    """Sample, score and compare. `initial=None` (or the policy itself) means KL = 0 exactly; `baseline`: round
    0's scores, in the same order (None: this is round 0)."""
    groups = generate(policy, tokenizer, prompts, seed=seed, **generation)
    flat = [c for g in groups for c in g]
    scores = list(score(flat))
    if initial is None or initial is policy:
        kl = 0.0
    else:
        kl = float((sequence_logps(policy, flat) - sequence_logps(initial, flat)).mean())
    return {
        "heldout/score_mean": statistics.fmean(scores),
        "heldout/score_se": statistics.pstdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else 0.0,
        "heldout/win_rate": win_rate(scores, baseline if baseline is not None else scores),
        "heldout/kl_to_initial": kl,
        "heldout/tokens_mean": statistics.fmean(len(c.completion_ids) for c in flat),
        "scores": scores,
        "samples": [{**c.to_dict(), "score": s} for c, s in zip(flat, scores)],
    }
