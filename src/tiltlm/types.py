"""The small set of data types every tiltlm module speaks.

Data flows:  file rows -> PreferenceExample -> TokenizedPair -> (batching) -> PairLogps -> losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

Messages = list[dict[str, Any]]
Text = Union[str, Messages]


def as_text(value: Text) -> str:
    """A prompt or completion as readable text: strings unchanged, messages as "[role] content" lines."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if not isinstance(value, list):
        return str(value)
    return "\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}" if isinstance(m, dict) else str(m)
                     for m in value)


@dataclass(frozen=True)
class PreferenceExample:
    """One preference pair after format normalisation, before tokenisation.

    `prompt` is the shared context x; `chosen`/`rejected` are the two completions only
    (for implicit-prompt data the shared prefix has already been split off).
    Plain-text examples hold strings; conversational ones hold lists of {"role", "content"} messages.
    """

    index: int  # 0-based row index in the source file/dataset (stable id used everywhere: caches, reports)
    source: str  # human-readable location, e.g. "data/train.jsonl:13"
    prompt: Text
    chosen: Text
    rejected: Text
    conversational: bool = False


@dataclass
class TokenizedPair:
    """Token ids of one pair. `prompt_ids` are shared: full chosen sequence = prompt_ids + chosen_ids.

    The ids are exactly the tokenisation of the full text (no BPE merge artefacts at the prompt/completion
    boundary); specials (BOS / chat-template markers / EOS) are already included where they belong.
    """

    index: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool = False

    @property
    def chosen_len(self) -> int:
        return len(self.prompt_ids) + len(self.chosen_ids)

    @property
    def rejected_len(self) -> int:
        return len(self.prompt_ids) + len(self.rejected_ids)


@dataclass
class PairLogps:
    """Per-pair sequence log-probs (sums over completion tokens) and completion token counts, all shape (B,).

    Optional, filled by core/logps.sequence_logps for the losses that need more than the sums:
    `*_tail` -- the log-prob sum over the completion's tokens past the pair's shared length min(n_w, n_l)
                (LD-DPO's "verbose" part; 0 for the shorter completion);
    `*_log_sum_sq` -- the sum over completion tokens of log sum_v p_v^2, detached (WPO's weights)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # float counts
    rejected_tokens: torch.Tensor
    chosen_tail: Optional[torch.Tensor] = None
    rejected_tail: Optional[torch.Tensor] = None
    chosen_log_sum_sq: Optional[torch.Tensor] = None
    rejected_log_sum_sq: Optional[torch.Tensor] = None

    def detach(self) -> "PairLogps":
        d = lambda t: None if t is None else t.detach()  # noqa: E731
        return PairLogps(self.chosen.detach(), self.rejected.detach(), self.chosen_tokens, self.rejected_tokens,
                         d(self.chosen_tail), d(self.rejected_tail), self.chosen_log_sum_sq, self.rejected_log_sum_sq)


@dataclass
class LossOutput:
    """What every loss function returns: per-pair losses and the implicit rewards it used, shape (B,)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
