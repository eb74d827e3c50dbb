"""No-grad scoring passes (the reference pass, evaluation) in length order: each batch then pads its rows to the
length of a near neighbour instead of to the longest of a random handful. HH pairs vary from ~60 to 512 tokens,
so a random batch of 8 pads most rows to the longest one; sorted, the padding nearly disappears. Exact: a pair's
log-probs do not depend on which pairs share its batch (masked padding), only the order of the work changes, and
the results come back in the caller's order.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch

from ..core.batching import segment_length
from ..types import PairLogps, TokenizedPair

Score = Callable[[Sequence[TokenizedPair]], PairLogps]


def by_length(pairs: Sequence[TokenizedPair], prefix_sharing: bool = True) -> list[TokenizedPair]:
    """The pairs, longest first (so a batch that runs out of memory does so on its first call)."""
    return sorted(pairs, key=lambda p: segment_length(p, prefix_sharing), reverse=True)


def in_length_order(score: Score) -> Score:
    """`score(pairs)` run over the pairs in length order, its per-pair results put back in the order given."""

    @functools.wraps(score)
    def sorted_score(pairs: Sequence[TokenizedPair]) -> PairLogps:
        order = sorted(range(len(pairs)), key=lambda k: segment_length(pairs[k], True), reverse=True)
        out = score([pairs[k] for k in order])
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
        return PairLogps(out.chosen[back], out.rejected[back], out.chosen_tokens[back], out.rejected_tokens[back])

    return sorted_score
