"""From scored completions to preference pairs, and what the pairs say about the round's signal.

`best_worst` (default): per prompt, the best-scored completion against the worst one. `all`: every two completions
of a prompt whose scores differ by more than `reward_margin`. Empty completions are left out (a dataset row needs
a response; they are counted). Either way ties (score difference <= the margin) and
two identical texts are dropped, and counted: a round where most candidate pairs are ties carries no signal (the
doctor's `no_signal_round` check reads these statistics).

A pair row is an ordinary dataset row in TRL's explicit format: strings for a plain-text prompt, lists of messages
when the prompt went through the chat template (so `tilt train` tokenises it the way the policy saw it), plus the
scorer's `chosen_score` and `rejected_score`.
"""

from __future__ import annotations

import difflib
import itertools
import statistics
from typing import Sequence

from ..types import as_text
from .sampling import Completion

PAIRINGS = ("best_worst", "all")


def _row(chosen: Completion, rejected: Completion, cs: float, rs: float) -> dict:
    if chosen.chat:
        prompt = chosen.prompt if isinstance(chosen.prompt, list) else [{"role": "user",
                                                                           "content": as_text(chosen.prompt)}]
        c, r = [{"role": "assistant", "content": chosen.completion}], [{"role": "assistant",
                                                                        "content": rejected.completion}]
    else:
        prompt, c, r = as_text(chosen.prompt), chosen.completion, rejected.completion
    return {"prompt": prompt, "chosen": c, "rejected": r, "chosen_score": cs, "rejected_score": rs,
            "prompt_index": chosen.prompt_index, "chosen_sample": chosen.sample, "rejected_sample": rejected.sample}


def build_pairs(groups: Sequence[Sequence[Completion]], scores: Sequence[Sequence[float]], *,
                pairing: str = "best_worst", reward_margin: float = 0.0) -> tuple[list[dict], dict]:
    """(pair rows, statistics). `groups[i]` are prompt i's completions and `scores[i]` their scores."""
    rows: list[dict] = []
    candidates = ties = identical = empty = 0
    for group, score in zip(groups, scores):
        kept = [k for k, c in enumerate(group) if c.completion.strip()]  # an empty response is not a valid row
        empty += len(group) - len(kept)
        group, score = [group[k] for k in kept], [score[k] for k in kept]
        if len(group) < 2:
            continue
        if pairing == "best_worst":
            order = sorted(range(len(group)), key=lambda k: (-score[k], k))  # first of equal scores wins: seeded
            options = [(order[0], order[-1])]
        else:
            options = list(itertools.combinations(range(len(group)), 2))
        for a, b in options:
            candidates += 1
            if group[a].completion == group[b].completion:
                identical += 1
                continue
            if abs(score[a] - score[b]) <= reward_margin:
                ties += 1
                continue
            c, r = (a, b) if score[a] > score[b] else (b, a)
            rows.append(_row(group[c], group[r], score[c], score[r]))
    stats = pair_statistics(rows, candidates=candidates, ties=ties, identical=identical)
    return rows, {**stats, "pairs/empty_completions": empty}


def _text(x) -> str:
    return x[-1]["content"] if isinstance(x, list) else x


def pair_statistics(rows: Sequence[dict], *, candidates: int, ties: int, identical: int) -> dict:
    """Counts and shares of the round's candidate pairs, the score gap and how alike chosen and rejected are."""
    gaps = [r["chosen_score"] - r["rejected_score"] for r in rows]
    similarity = [difflib.SequenceMatcher(None, _text(r["chosen"]), _text(r["rejected"])).ratio() for r in rows]
    return {
        "pairs/count": len(rows),
        "pairs/candidates": candidates,
        "pairs/tied_frac": ties / candidates if candidates else 0.0,
        "pairs/identical_frac": identical / candidates if candidates else 0.0,
        "pairs/score_gap_mean": statistics.fmean(gaps) if gaps else 0.0,
        "pairs/similarity_mean": statistics.fmean(similarity) if similarity else 0.0,
        "pairs/chosen_score_mean": statistics.fmean(r["chosen_score"] for r in rows) if rows else 0.0,
        "pairs/rejected_score_mean": statistics.fmean(r["rejected_score"] for r in rows) if rows else 0.0,
    }
