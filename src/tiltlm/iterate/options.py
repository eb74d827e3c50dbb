"""What `tilt iterate` adds to a training run's options: how each round samples, scores and pairs.

Every training option (`beta`, `learning_rate`, `max_steps`, `num_train_epochs`, `save_steps`, ...) is a
TrainConfig field and applies to each round's DPO run; `model` is the initial policy, `output_dir` the iterate run
folder, `seed` seeds every round (round k samples with a seed derived from (seed, k)).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError
from .pairs import PAIRINGS

REFERENCES = ("previous", "initial")


@dataclass
class IterateOptions:
    prompts: Any = None  # a prompts file (.jsonl {"prompt"}, .json list, text lines) or a list of prompts
    eval_prompts: Any = None  # held-out prompts for the per-round curves; default: eval_prompt_split of `prompts`
    eval_prompt_split: float = 0.1  # share of `prompts` held out (seeded) when no eval_prompts are given; 0 = none
    rounds: int = 3
    prompts_per_round: int = 0  # 0 = every training prompt each round; N = the next N prompts, cycling
    num_generations: int = 4  # completions sampled per prompt per round
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    generation_batch_size: int = 32
    eval_generations: int = 2  # completions per held-out prompt for the curves
    use_chat_template: bool = True
    scorer: Optional[str] = None  # fn:MODULE:FUNCTION | rm:MODEL | judge | judge:MODEL
    judge_template: Optional[str] = None  # a text file with {prompt} and {completion}
    judge_labels: Optional[list[str]] = None  # default 1 2 3 4 5
    pairing: str = "best_worst"  # best_worst | all
    reward_margin: float = 0.0  # a pair needs |score difference| > this (ties are dropped)
    ref: str = "previous"  # the reference of round k: the previous iterate (round k-1's model) or the initial model

    def validate(self) -> "IterateOptions":
        if self.prompts is None:
            raise ConfigError("tilt iterate needs --prompts (a .jsonl / .json / text file of prompts)")
        if not self.scorer:
            raise ConfigError("tilt iterate needs a scorer: --scorer fn:MODULE:FUNCTION, rm:MODEL, judge or "
                              "judge:MODEL (or --reward-fn MODULE:FUNCTION)")
        for name in ("rounds", "num_generations", "max_new_tokens", "generation_batch_size", "eval_generations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: a pair needs two completions of the same prompt")
        if self.pairing not in PAIRINGS:
            raise ConfigError(f"pairing must be one of {', '.join(PAIRINGS)}, got {self.pairing!r}")
        if self.ref not in REFERENCES:
            raise ConfigError(f"ref must be previous or initial, got {self.ref!r}")
        if not 0.0 <= self.eval_prompt_split < 1.0:
            raise ConfigError(f"eval_prompt_split must be in [0, 1), got {self.eval_prompt_split}")
        if self.reward_margin < 0 or self.prompts_per_round < 0 or self.temperature < 0:
            raise ConfigError("reward_margin, prompts_per_round and temperature must be >= 0")
        return self

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


FIELDS = tuple(f.name for f in dataclasses.fields(IterateOptions))


def split_options(options: dict) -> tuple[dict, dict]:
    """(iterate options, training options) of one flat dict of keyword options."""
    mine = {k: v for k, v in options.items() if k in FIELDS}
    return mine, {k: v for k, v in options.items() if k not in FIELDS}


def derived_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed for (seed, parts): round k's sampling is derived_seed(seed, "sample", k)."""
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
