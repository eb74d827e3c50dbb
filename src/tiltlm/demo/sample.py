"""Sampling completions from a policy, scoring their exact log-probs, and labelling preference pairs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..iterate.sampling import sequence_logps  # noqa: F401 (log pi(y|x) of samples; re-exported)


@dataclass
class Sample:
    prompt: str
    completion: str  # decoded text with a leading space (prompt + completion = the full review)
    prompt_ids: list[int]  # includes <bos>
    completion_ids: list[int]  # generated ids up to and including <eos> if one was generated
    reward: float = 0.0


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[str],
    *,
    n: int = 1,
    max_new_tokens: int = 16,
    seed: int = 0,
    batch_size: int = 256,
    temperature: float = 1.0,
    reward_fn: Optional[Callable[[str], float]] = None,
) -> list[list[Sample]]:
    """`n` ancestral samples per prompt (temperature 1, no top-k / top-p: exactly y ~ pi(.|x)).

    Returns one list of `n` Samples per prompt, in prompt order. Seeded: the same call gives the same samples.
    """
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    flat = [p for p in prompts for _ in range(n)]
    out: list[Sample] = []
    torch.manual_seed(seed)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(flat), batch_size):
            chunk = flat[start : start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True)
            gen = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
            )
            new = gen[:, enc["input_ids"].shape[1] :].tolist()
            for r, (prompt, ids) in enumerate(zip(chunk, new)):
                if eos in ids:
                    ids = ids[: ids.index(eos) + 1]
                pids = [t for t, m in zip(enc["input_ids"][r].tolist(), enc["attention_mask"][r].tolist()) if m]
                text = tokenizer.decode(ids, skip_special_tokens=True)
                text = (" " + text) if text and not text.startswith(" ") else text
                s = Sample(prompt, text, pids, ids)
                if reward_fn is not None:
                    s.reward = float(reward_fn(text))
                out.append(s)
    finally:
        tokenizer.padding_side = old_side
    return [out[i * n : (i + 1) * n] for i in range(len(prompts))]


def build_pairs(groups: list[list[Sample]], *, max_pairs_per_prompt: int = 6) -> list[dict]:
    """Label pairs within each prompt's samples by the ground-truth reward (chosen = higher reward; ties dropped).

    With 4 samples per prompt there are at most 6 pairs, as in the DPO paper's IMDb setup. Rows use the standard
    explicit format {"prompt", "chosen", "rejected"} plus the two rewards for reference.
    """
    rows = []
    for group in groups:
        k = 0
        for a, b in itertools.combinations(group, 2):
            if a.reward == b.reward or a.completion == b.completion or k >= max_pairs_per_prompt:
                continue
            c, r = (a, b) if a.reward > b.reward else (b, a)
            rows.append({"prompt": c.prompt, "chosen": c.completion, "rejected": r.completion,
                         "chosen_reward": c.reward, "rejected_reward": r.reward})
            k += 1
    return rows
