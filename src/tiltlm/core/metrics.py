"""Aggregate per-pair diagnostics over a logging window into TRL's metric names.

Every mean is over all pairs of the window, weighted by pairs (a micro-batch of 3 pairs counts 3x one of 1);
per-token log-probs are token-weighted (total log-prob / total tokens). We keep sums, never means of means.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..types import LossOutput, PairLogps


def preference_accuracy(margins: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 if the chosen response scores higher than the rejected one, 0 if lower, 1/2 on an exact tie.

    The one accuracy of tiltlm (training metrics, eval, demo): a policy identical to its reference has every
    margin exactly 0 and scores exactly 0.5, chance, instead of 0.
    """
    return (margins > 0).to(margins.dtype) + 0.5 * (margins == 0).to(margins.dtype)


class MetricWindow:
    """Sums over the pairs of a logging window (or of one step's micro-batches); `merge` adds two windows, so the
    windows of several processes combine exactly (pair- and token-weighted means stay exact)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.sums: dict[str, float] = {}
        self.len_diff: list[float] = []
        self.margins: list[float] = []
        self.grad_norms: list[float] = []  # one per optimizer step in the window (pre-clipping)
        self.step_seconds: list[float] = []
        self.update_kept: list[float] = []  # per applied step: share of the intended update the weights kept

    def merge(self, other: "MetricWindow") -> None:
        """Fold another window (e.g. one optimizer step's micro-batches) into this one."""
        self.n += other.n
        for k, v in other.sums.items():
            self._add(k, v)
        self.len_diff += other.len_diff
        self.margins += other.margins
        self.grad_norms += other.grad_norms
        self.step_seconds += other.step_seconds
        self.update_kept += other.update_kept

    def note_step(self, grad_norm: float, seconds: float, update_kept: Optional[float] = None) -> None:
        """Per optimizer step: the pre-clipping gradient norm, the step's wall time (forward+backward+update) and,
        when measured, the share of the optimizer's intended update the stored weights kept."""
        self.grad_norms.append(grad_norm)
        self.step_seconds.append(seconds)
        if update_kept is not None:
            self.update_kept.append(update_kept)

    def _add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value

    @torch.no_grad()
    def add(self, policy: PairLogps, ref: Optional[PairLogps], out: LossOutput) -> None:
        """Accumulate one micro-batch: policy/ref log-probs and the loss output, all shape (B,)."""
        f = lambda t: t.detach().double().cpu()  # noqa: E731
        rc, rr = f(out.chosen_rewards), f(out.rejected_rewards)
        self.n += rc.numel()
        self._add("loss", f(out.losses).sum().item())
        self._add("rewards/chosen", rc.sum().item())
        self._add("rewards/rejected", rr.sum().item())
        self._add("rewards/accuracies", preference_accuracy(rc - rr).sum().item())
        self._add("rewards/margins", (rc - rr).sum().item())
        self._add("logps/chosen", f(policy.chosen).sum().item())
        self._add("logps/rejected", f(policy.rejected).sum().item())
        self._add("_tok/chosen", f(policy.chosen_tokens).sum().item())
        self._add("_tok/rejected", f(policy.rejected_tokens).sum().item())
        if ref is not None:
            # the seed's kl_proxy: mean |log-ratio| of chosen and rejected, averaged
            kl = ((f(policy.chosen) - f(ref.chosen)).abs() + (f(policy.rejected) - f(ref.rejected)).abs()) / 2
            self._add("kl_proxy", kl.sum().item())
        for name, t in out.extras.items():
            self._add(name, f(t).sum().item())
        self.len_diff += (f(policy.chosen_tokens) - f(policy.rejected_tokens)).tolist()
        self.margins += (rc - rr).tolist()

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            return {}
        out = {k: v / self.n for k, v in self.sums.items() if not k.startswith("_tok/")}
        for side in ("chosen", "rejected"):
            tok = self.sums[f"_tok/{side}"]
            out[f"logps_per_token/{side}"] = self.sums[f"logps/{side}"] / max(tok, 1.0)
            out[f"tokens/{side}"] = tok / self.n
        corr = pearson(self.len_diff, self.margins)
        if corr is not None:
            out["len_diff_margin_corr"] = corr
        if self.grad_norms:
            out["grad_norm"] = sum(self.grad_norms) / len(self.grad_norms)
            out["step_seconds"] = sum(self.step_seconds) / len(self.step_seconds)
        if self.update_kept:
            out["update_kept"] = sum(self.update_kept) / len(self.update_kept)
        out["pairs"] = self.n
        return out


def pearson(x: list[float], y: list[float]) -> Optional[float]:
    if len(x) < 4:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)
