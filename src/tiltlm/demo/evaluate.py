"""Demo evaluation: ground-truth reward and sampled KL(pi || pi_ref) of a policy, held-out preference accuracy."""

from __future__ import annotations

import math
import statistics
from typing import Callable

import torch

from ..core.metrics import preference_accuracy as accuracy_per_pair
from .sample import Sample, sample, sequence_logps


def evaluate_policy(
    policy,
    ref,
    tokenizer,
    prompts: list[str],
    *,
    reward_fn: Callable[[str], float],
    n: int = 4,
    max_new_tokens: int = 16,
    seed: int = 0,
) -> dict:
    """Sample `n` completions per prompt from `policy`; return their mean reward and the KL estimate.

    KL(pi || pi_ref) is the sequence-level Monte-Carlo estimate mean_{y~pi}[log pi(y|x) - log pi_ref(y|x)]
    (unbiased; a single estimate can dip slightly below 0 when pi == pi_ref up to noise).
    `ref=None` means the policy is its own reference (KL = 0 exactly).
    """
    groups = sample(policy, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, seed=seed, reward_fn=reward_fn)
    flat = [s for g in groups for s in g]
    rewards = [s.reward for s in flat]
    if ref is None or ref is policy:
        kl, kl_se = 0.0, 0.0
    else:
        diff = sequence_logps(policy, flat) - sequence_logps(ref, flat)
        kl = float(diff.mean())
        kl_se = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    lengths = [len(s.completion_ids) for s in flat]
    return {
        "reward": statistics.fmean(rewards),
        "reward_se": statistics.pstdev(rewards) / math.sqrt(len(rewards)) if len(rewards) > 1 else 0.0,
        "kl": kl,
        "kl_se": kl_se,
        "mean_tokens": statistics.fmean(lengths),
        "n_samples": len(flat),
        "groups": groups,
    }


def best_of_n(groups: list[list[Sample]], ns: list[int]) -> list[dict]:
    """Best-of-N baseline from already-sampled groups: reward of the best of the first N samples of each prompt.

    Its KL to the sampler is the standard analytic bound log N - (N - 1) / N (exact for continuous rewards).
    """
    out = []
    for k in ns:
        if k > min(len(g) for g in groups):
            continue
        best = [max(s.reward for s in g[:k]) for g in groups]
        out.append({"n": k, "reward": statistics.fmean(best), "kl": math.log(k) - (k - 1) / k})
    return out


def rows_to_samples(tokenizer, rows: list[dict]) -> tuple[list[Sample], list[Sample]]:
    """Tokenize explicit pair rows the way the DPO data module does: <bos> prompt | completion <eos>."""
    chosen, rejected = [], []
    for row in rows:
        pids = tokenizer(row["prompt"]).input_ids
        for key, bucket in (("chosen", chosen), ("rejected", rejected)):
            cids = tokenizer(row[key], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            bucket.append(Sample(row["prompt"], row[key], pids, cids))
    return chosen, rejected


@torch.no_grad()
def preference_accuracy(policy, ref, tokenizer, rows: list[dict], *, beta: float = 0.1) -> dict:
    """Held-out preference accuracy of the DPO implicit reward r(x,y) = beta * log pi(y|x)/pi_ref(y|x).

    A pair counts as correct when r(chosen) > r(rejected); an exact tie counts one half.
    """
    if not rows:
        return {"accuracy": float("nan"), "margin": float("nan"), "pairs": 0}
    c, r = rows_to_samples(tokenizer, rows)
    lc, lr = sequence_logps(policy, c), sequence_logps(policy, r)
    if ref is not None and ref is not policy:
        lc, lr = lc - sequence_logps(ref, c), lr - sequence_logps(ref, r)
    else:
        lc, lr = lc - lc, lr - lr
    margin = beta * (lc - lr)
    acc = accuracy_per_pair(margin).mean()
    return {"accuracy": float(acc), "margin": float(margin.mean()), "pairs": len(rows)}


def examples(before: list[list[Sample]], after: list[list[Sample]], k: int = 3) -> list[dict]:
    """First sample of the first `k` prompts whose SFT sample scored <= 0 (selected on the SFT side only, so the
    DPO side is not cherry-picked), with their rewards; falls back to the first prompts."""
    pairs = list(zip(before, after))
    chosen = [p for p in pairs if p[0][0].reward <= 0][:k]
    chosen += [p for p in pairs if p not in chosen][: k - len(chosen)]
    out = []
    for gb, ga in chosen:
        out.append({"prompt": gb[0].prompt, "before": gb[0].completion, "before_reward": gb[0].reward,
                    "after": ga[0].completion, "after_reward": ga[0].reward})
    return out


def strip_groups(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "groups"}


